"""Chapter 11's exercises: a fixed-bit quantiser, the entropy of a histogram, a JPEG's header from its markers, a
float code in bits per pixel."""
from __future__ import annotations

import io
import math
import struct

import numpy as np
import torch

from . import exercise


# --------------------------------------------------------------------------- 11.1 a quantiser with fixed bits
def quantise_bits(code: torch.Tensor, low: float, high: float, bits: int) -> torch.Tensor:
    """Return each value's nearest of 2**bits evenly spaced levels on [low, high], as integers."""
    levels = 2 ** bits - 1  # the last level's index
    return torch.round((code.clamp(low, high) - low) / (high - low) * levels).long()


def _floor_instead_of_round(code, low, high, bits):  # a typical wrong answer: truncation, not the nearest level
    return torch.floor((code.clamp(low, high) - low) / (high - low) * (2 ** bits - 1)).long()


def _no_clamp(code, low, high, bits):  # a typical wrong answer: values outside [low, high] leave 0..2**bits-1
    return torch.round((code - low) / (high - low) * (2 ** bits - 1)).long()


def _levels_not_minus_one(code, low, high, bits):  # a typical wrong answer: 2**bits intervals, so `high` overflows
    return torch.round((code.clamp(low, high) - low) / (high - low) * 2 ** bits).long()


@exercise("11.1", "a quantiser with a fixed number of bits", solution=quantise_bits,
          wrong=[_floor_instead_of_round, _no_clamp, _levels_not_minus_one],
          hint="clamp to [low, high], scale so that low => 0 and high => 2**bits - 1, then torch.round and .long()")
def _check_quantise_bits(answer) -> str | None:
    g = torch.Generator().manual_seed(0)
    code = 6 * torch.randn(50, 16, generator=g)
    for low, high, bits in ((-4.0, 4.0, 3), (-10.0, 5.0, 4), (0.0, 1.0, 1)):
        got = answer(code, low, high, bits)
        if not isinstance(got, torch.Tensor) or got.shape != code.shape:
            shape = tuple(getattr(got, "shape", ()))
            return f"it returned {type(got).__name__} of shape {shape}, not {tuple(code.shape)}"
        if got.is_floating_point():
            return "the levels must be integers (.long()), not floats"
        if int(got.min()) < 0 or int(got.max()) > 2 ** bits - 1:
            return (f"with bits={bits} it gave levels from {int(got.min())} to {int(got.max())}, "
                    f"outside 0..{2 ** bits - 1}")
        if not torch.equal(got, quantise_bits(code, low, high, bits)):
            return f"with low={low}, high={high}, bits={bits} some levels are not the nearest ones"
    return None


# --------------------------------------------------------------------------- 11.2 the entropy of a histogram
def entropy_bits(symbols: torch.Tensor) -> float:
    """Return the empirical entropy of integer symbols, in bits per symbol."""
    _, counts = torch.unique(symbols, return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * torch.log2(p)).sum())


def _natural_log(symbols):  # a typical wrong answer: nats, not bits
    _, counts = torch.unique(symbols, return_counts=True)
    p = counts.double() / counts.sum()
    return float(-(p * torch.log(p)).sum())


def _log2_of_alphabet(symbols):  # a typical wrong answer: a fixed-length code's bits, ignoring the frequencies
    return math.log2(len(torch.unique(symbols)))


@exercise("11.2", "the entropy of a histogram", solution=entropy_bits, wrong=[_natural_log, _log2_of_alphabet],
          hint="torch.unique(symbols, return_counts=True) gives the counts; p = counts / total; "
               "the answer is -(p * log2 p).sum(), in bits")
def _check_entropy_bits(answer) -> str | None:
    cases = [torch.tensor([3, 3, 3, 3]), torch.tensor([0, 1, 0, 1]), torch.tensor([-2, 0, 0, 0, 5, 5, 5, 5]),
             torch.randint(-20, 20, (5000,), generator=torch.Generator().manual_seed(0))]
    for symbols in cases:
        got = answer(symbols)
        if not isinstance(got, (int, float)) and not (isinstance(got, torch.Tensor) and got.numel() == 1):
            return f"the answer is a number of bits per symbol, got {type(got).__name__}"
        want = entropy_bits(symbols)
        if abs(float(got) - want) > 1e-6:
            shown = f"{symbols[:8].tolist()}{'...' if len(symbols) > 8 else ''}"
            return f"for symbols {shown} it gave {float(got):.4f}, not {want:.4f}"
    return None


# --------------------------------------------------------------------------- 11.3 a JPEG's header from its markers
def header_size(data: bytes) -> int:
    """Return the bytes of a JPEG file before its SOS marker, walking its segments."""
    offset = 2  # after SOI (FF D8), which has no length
    while data[offset + 1] != 0xDA:  # FF DA: start of scan
        offset += 2 + struct.unpack(">H", data[offset + 2:offset + 4])[0]  # the marker, then its length
    return offset


def _search(data):  # a typical wrong answer: the first FF DA anywhere, even inside a comment
    return data.find(b"\xff\xda")


def _after_sos_header(data):  # a typical wrong answer: counts the SOS segment's own header too
    offset = header_size(data)
    return offset + 2 + struct.unpack(">H", data[offset + 2:offset + 4])[0]


def _jpegs() -> list[bytes]:
    from PIL import Image
    g = np.random.default_rng(0)
    files = []
    for q, comment in ((10, None), (75, None), (95, b"a comment with \xff\xda inside")):
        buffer = io.BytesIO()
        pixels = g.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(buffer, "JPEG", quality=q, **({"comment": comment} if comment else {}))
        files.append(buffer.getvalue())
    return files


@exercise("11.3", "a JPEG's header from its markers", solution=header_size, wrong=[_search, _after_sos_header],
          hint="start at byte 2 (after FF D8); while the byte after FF is not DA, add 2 + the big-endian length "
               "in the next two bytes; the offset you stop at is the header's size")
def _check_header_size(answer) -> str | None:
    from ..chapters._ch11_codecs import jpeg_header_bytes
    for data in _jpegs():
        got, want = answer(data), jpeg_header_bytes(data)
        if got != want:
            return (f"for a {len(data):,}-byte JPEG it gave {got!r}, not {want} (the SOS marker's offset found by "
                    "walking the segments; a comment can contain the bytes FF DA)")
    return None


# --------------------------------------------------------------------------- 11.4 a float code in bits per pixel
FLOAT_CODE_BPP = 256 * 32 / (32 * 32)  # 256 values x 32 bits / 1,024 pixels


@exercise("11.4", "a float code in bits per pixel", solution=FLOAT_CODE_BPP, wrong=[32.0, 1024.0, 8.0 / 3],
          hint="256 values x 4 bytes = 1,024 bytes = 8,192 bits, over 32 x 32 = 1,024 pixels")
def _check_float_code_bpp(answer) -> str | None:
    if not isinstance(answer, (int, float)):
        return f"the answer is a number of bits per pixel, got {answer!r}"
    if abs(answer - FLOAT_CODE_BPP) <= 0.01:
        return None
    if abs(answer - 32) <= 0.01:
        return "32 is the bits of one value; divide the code's bits by the image's 1,024 pixels"
    if abs(answer - FLOAT_CODE_BPP / 3) <= 0.01:
        return f"{answer:g} is per colour value; bits per pixel count the 1,024 pixel positions"
    return f"{answer:g} is not it"
