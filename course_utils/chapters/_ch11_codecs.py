"""Chapter 11's hand-written plumbing: JPEG and WebP bytes counted whole and without their headers, the learner's
codec run over a split, rate-distortion curves compared at equal PSNR, the photos, the figures.

The learner's quantiser, histogram coder, round trip and rate term live in the generated ``ch11_codec`` module.
"""
from __future__ import annotations

import io
import math
import struct
from collections.abc import Callable, Sequence

import numpy as np
import torch

from ..data import to_float, to_uint8
from ..errors import CourseError
from ..metrics import psnr_from_mse
from .ch11_codec import HistogramCoder, compress, decompress, dequantise, quantise

PIXELS = 32 * 32  # bits per pixel are per pixel position of a CIFAR-10 image (three colours share it)
JPEG_MARKERS = {0xD8: "SOI", 0xE0: "APP0", 0xDB: "DQT", 0xC0: "SOF0", 0xC2: "SOF2", 0xC4: "DHT", 0xDA: "SOS",
                0xD9: "EOI", 0xDD: "DRI", 0xFE: "COM"}
PHOTOS = ("astronaut", "chelsea", "coffee")  # scikit-image samples stored as PNG: never JPEG-compressed before


# --------------------------------------------------------------------------- files and their headers
def _pil(image: torch.Tensor):
    from PIL import Image
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise CourseError(f"Expected one uint8 colour image of shape (3, H, W), got {image.dtype} "
                          f"{tuple(image.shape)}: pass images[i] of a CIFAR-10 split, or to_uint8(x) of a float one.")
    return Image.fromarray(image.permute(1, 2, 0).numpy())


def jpeg_file(image: torch.Tensor, quality: int) -> bytes:
    """Return a JPEG file of a uint8 (3, H, W) image: Pillow's defaults (4:2:0 colour, the standard Huffman tables)."""
    buffer = io.BytesIO()
    _pil(image).save(buffer, "JPEG", quality=int(quality))
    return buffer.getvalue()


def webp_file(image: torch.Tensor, quality: int) -> bytes:
    """Return a lossy WebP file of a uint8 (3, H, W) image (method 6: libwebp's slowest, smallest files)."""
    buffer = io.BytesIO()
    _pil(image).save(buffer, "WEBP", quality=int(quality), method=6)
    return buffer.getvalue()


def decode_file(data: bytes) -> torch.Tensor:
    """Return the uint8 (3, H, W) image a JPEG or WebP file holds."""
    from PIL import Image
    return torch.from_numpy(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).copy()).permute(2, 0, 1)


def jpeg_segments(data: bytes) -> list[dict]:
    """Return a JPEG file's marker segments up to the scan, then the scan: name, offset and bytes of each."""
    if data[:2] != b"\xff\xd8":
        raise CourseError("This is not a JPEG file: it does not start with the SOI marker FF D8.")
    segments, offset = [{"marker": "SOI", "offset": 0, "bytes": 2}], 2
    while offset < len(data):
        if data[offset] != 0xFF:
            raise CourseError(f"Broken JPEG: expected a marker (FF) at byte {offset}, found {data[offset]:02X}.")
        code = data[offset + 1]
        length = struct.unpack(">H", data[offset + 2:offset + 4])[0]  # the segment's length, its 2 bytes included
        name = JPEG_MARKERS.get(code, f"FF{code:02X}")
        if code == 0xDA:  # start of scan: its header, then entropy-coded data up to the EOI marker
            segments.append({"marker": "SOS + scan + EOI", "offset": offset, "bytes": len(data) - offset})
            return segments
        segments.append({"marker": name, "offset": offset, "bytes": 2 + length})
        offset += 2 + length
    raise CourseError("Broken JPEG: no SOS marker (FF DA) was found.")


def jpeg_header_bytes(data: bytes) -> int:
    """Return the bytes before a JPEG's SOS marker: the fixed header (tables, sizes) a decoder could know."""
    return jpeg_segments(data)[-1]["offset"]


def webp_payload(data: bytes) -> bytes:
    """Return a lossy WebP's VP8 bitstream: the file without the RIFF container and its chunk header."""
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise CourseError("This is not a WebP file: it does not start with RIFF....WEBP.")
    offset = 12
    while offset + 8 <= len(data):
        fourcc, size = data[offset:offset + 4], struct.unpack("<I", data[offset + 4:offset + 8])[0]
        if fourcc == b"VP8 ":
            return data[offset + 8:offset + 8 + size]
        offset += 8 + size + (size & 1)  # chunks are padded to an even size
    raise CourseError("This WebP holds no lossy 'VP8 ' chunk (a lossless or animated file): "
                      "save it with lossless=False.")


# --------------------------------------------------------------------------- scores and curves
def scores(decoded: torch.Tensor, images: torch.Tensor) -> dict:
    """Return PSNR (of the split's mean squared error) and mean SSIM of decoded images against uint8 originals."""
    from torchmetrics.functional.image import structural_similarity_index_measure
    target, decoded = to_float(images), to_float(decoded).float()
    mse = float(((decoded - target) ** 2).mean())
    return {"PSNR": psnr_from_mse(mse), "SSIM": float(structural_similarity_index_measure(decoded, target,
                                                                                       data_range=1.0))}


def pillow_curve(images: torch.Tensor, codec: str, qualities: Sequence[int]) -> "pd.DataFrame":
    """Return one row per quality: mean bytes per image (whole and headerless), bits per pixel, PSNR, SSIM."""
    import pandas as pd
    make = {"JPEG": jpeg_file, "WebP": webp_file}[codec]
    rows = []
    for q in qualities:
        files = [make(image, q) for image in images]
        headerless = [len(f) - jpeg_header_bytes(f) if codec == "JPEG" else len(webp_payload(f)) for f in files]
        decoded = torch.stack([decode_file(f) for f in files])
        whole = float(np.mean([len(f) for f in files]))
        rows.append({"quality": q, "bytes": whole, "headerless bytes": float(np.mean(headerless)),
                     "bpp": whole * 8 / PIXELS, "headerless bpp": float(np.mean(headerless)) * 8 / PIXELS,
                     **scores(decoded, images)})
    return pd.DataFrame(rows)


def reencoding_psnr(images: torch.Tensor, qualities: Sequence[int]) -> dict[int, float]:
    """Return the PSNR of re-encoding images with JPEG at each quality: how close to lossless each is."""
    return {q: scores(torch.stack([decode_file(jpeg_file(im, q)) for im in images]), images)["PSNR"]
            for q in qualities}


def code_point(encode: Callable, decode: Callable, coder: HistogramCoder, images: torch.Tensor, step: float) -> dict:
    """Return the learner's codec on uint8 images: real bytes, ideal bits, bits per pixel, PSNR, SSIM."""
    x = to_float(images)
    streams = compress(encode, x, step, coder)
    decoded = decompress(decode, streams, step, coder)
    with torch.no_grad():
        ideal = float(coder.ideal_bits(quantise(encode(x), step)).mean())
    real = float(np.mean([len(s) for s in streams]))
    return {"bytes": real, "ideal bytes": ideal / 8, "bpp": real * 8 / PIXELS, **scores(decoded, images)}


def codes_of(encode: Callable, images: torch.Tensor, batch: int = 1000) -> torch.Tensor:
    """Return the codes of uint8 images, batch by batch, without gradients."""
    with torch.no_grad():
        return torch.cat([encode(to_float(images[i:i + batch])) for i in range(0, len(images), batch)])


def code_curve(encode: Callable, decode: Callable, train: torch.Tensor, images: torch.Tensor,
               steps: Sequence[float]) -> "pd.DataFrame":
    """Return one row per quantiser step: histograms fitted on the training images' codes, every image of
    ``images`` written as a bitstream, decoded and scored."""
    import pandas as pd
    codes = codes_of(encode, train)
    return pd.DataFrame([{"step": step,
                          **code_point(encode, decode, HistogramCoder(quantise(codes, step)), images, step)}
                         for step in steps])


def ideal_curve(encode: Callable, decode: Callable, train: torch.Tensor, images: torch.Tensor,
                steps: Sequence[float]) -> "pd.DataFrame":
    """Return one row per step from the ideal bits and the decoded clamped symbols (no streams written, no SSIM):
    the fast version of ``code_curve`` for choosing on validation (the round trip decodes the same images)."""
    import pandas as pd
    train_codes, codes = codes_of(encode, train), codes_of(encode, images)
    target, rows = to_float(images), []
    for step in steps:
        coder = HistogramCoder(quantise(train_codes, step))
        symbols = coder.clip(quantise(codes, step))
        with torch.no_grad():
            decoded = torch.cat([decode(dequantise(symbols[i:i + 1000], step)).clamp(0, 1)
                                 for i in range(0, len(symbols), 1000)])
        bits = float(coder.ideal_bits(symbols).mean())
        rows.append({"step": step, "ideal bytes": bits / 8, "bpp": bits / PIXELS,
                     "PSNR": psnr_from_mse(float(((decoded - target) ** 2).mean()))})
    return pd.DataFrame(rows)


def model_codec(model: torch.nn.Module) -> tuple[Callable, Callable]:
    """Return (encode, decode) of an autoencoder in eval mode, for float [0, 1] images."""
    model.eval()
    return model.encode, model.decode


def pca_codec(pca) -> tuple[Callable, Callable]:
    """Return (encode, decode) of a fitted scikit-learn PCA, on float [0, 1] image batches of shape N x 3x32x32."""
    def encode(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(pca.transform(x.flatten(1).numpy())).float()

    def decode(z: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(pca.inverse_transform(z.numpy())).float().view(-1, 3, 32, 32)
    return encode, decode


def pareto(curve: "pd.DataFrame", bits: str = "bpp") -> "pd.DataFrame":
    """Return a curve's points sorted by bits, keeping only those that raise the PSNR (the best at each rate)."""
    curve = curve.sort_values(bits)
    return curve[curve["PSNR"] > curve["PSNR"].cummax().shift(fill_value=-math.inf)]


def bpp_at(curve: "pd.DataFrame", psnr: float, bits: str = "bpp") -> float:
    """Return the bits per pixel a curve needs for ``psnr``: linear interpolation on its Pareto front, NaN outside."""
    front = pareto(curve, bits)
    return float(np.interp(psnr, front["PSNR"], front[bits], left=np.nan, right=np.nan))


def equal_psnr_table(curves: dict[str, tuple["pd.DataFrame", str]], psnrs: Sequence[float]) -> "pd.DataFrame":
    """Return bits per pixel of each curve (name -> (curve, bits column)) at each PSNR; NaN outside a curve's range."""
    import pandas as pd
    return pd.DataFrame({name: [bpp_at(c, p, bits) for p in psnrs] for name, (c, bits) in curves.items()},
                        index=pd.Index(psnrs, name="PSNR (dB)"))


def verdicts(table: "pd.DataFrame", ours: str) -> list[str]:
    """Return one line per other codec: at which PSNRs of the table ``ours`` needs fewer bits, and by how much."""
    lines = []
    for other in table.columns.drop(ours):
        both = table[[ours, other]].dropna()
        wins = [f"{p:g}" for p, r in both.iterrows() if r[ours] < r[other]]
        losses = [f"{p:g}" for p, r in both.iterrows() if r[ours] >= r[other]]
        ratio = (both[ours] / both[other])
        lines.append(f"vs {other}: fewer bits at {', '.join(wins) or 'no'} dB, more at {', '.join(losses) or 'no'} dB"
                     + (f" (ours / theirs from {ratio.min():.2f}x to {ratio.max():.2f}x)" if len(both) else
                        " (no common PSNR)"))
    return lines


# --------------------------------------------------------------------------- photos
def sample_photos() -> dict[str, torch.Tensor]:
    """Return scikit-image's sample photos as uint8 (3, H, W), cropped to multiples of 32 pixels."""
    import skimage.data
    photos = {}
    for name in PHOTOS:
        array = getattr(skimage.data, name)()
        h, w = (array.shape[0] // 32) * 32, (array.shape[1] // 32) * 32
        photos[name] = torch.from_numpy(np.ascontiguousarray(array[:h, :w, :3])).permute(2, 0, 1)
    return photos


def tiles(photo: torch.Tensor, side: int = 32) -> torch.Tensor:
    """Cut a (3, H, W) photo into N x 3 x side x side tiles, row by row."""
    c, h, w = photo.shape
    return photo.unfold(1, side, side).unfold(2, side, side).permute(1, 2, 0, 3, 4).reshape(-1, c, side, side)


def untile(parts: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Put N x 3 x s x s tiles (row by row) back into one (3, height, width) image."""
    s = parts.shape[-1]
    rows, cols = height // s, width // s
    return parts.view(rows, cols, 3, s, s).permute(2, 0, 3, 1, 4).reshape(3, height, width)


def photo_table(photos: dict[str, torch.Tensor], encode: Callable, decode: Callable, coder: HistogramCoder,
                step: float, qualities: Sequence[int]) -> "pd.DataFrame":
    """Return, per photo, the tile codec's bits per pixel and PSNR beside JPEG's and WebP's at the same PSNR."""
    import pandas as pd
    rows = {}
    for name, photo in photos.items():
        parts = tiles(photo)
        streams = compress(encode, to_float(parts), step, coder)
        decoded = untile(decompress(decode, streams, step, coder), *photo.shape[1:])
        pixels = photo.shape[1] * photo.shape[2]
        ours = scores(decoded[None], photo[None])["PSNR"]
        row = {"size": f"{photo.shape[2]}x{photo.shape[1]}", "AE tiles PSNR": ours,
               "AE tiles bpp": sum(len(s) for s in streams) * 8 / pixels}
        for codec, make in (("JPEG", jpeg_file), ("WebP", webp_file)):
            points = []
            for q in qualities:
                f = make(photo, q)
                head = jpeg_header_bytes(f) if codec == "JPEG" else len(f) - len(webp_payload(f))
                points.append({"bpp": len(f) * 8 / pixels, "headerless bpp": (len(f) - head) * 8 / pixels,
                               "PSNR": scores(decode_file(f)[None], photo[None])["PSNR"], "header": head})
            curve = pd.DataFrame(points)
            row[f"{codec} bpp"] = bpp_at(curve, ours)
            row[f"{codec} header share"] = float((curve["header"] / (curve["bpp"] * pixels / 8)).median())
        rows[name] = row
    return pd.DataFrame.from_dict(rows, orient="index")


# --------------------------------------------------------------------------- figures
def plot_curves(curves: dict[str, tuple["pd.DataFrame", str]], band: tuple[float, float] = (24.0, 28.0),
                title: str = "CIFAR-10 test split"):
    """Plot PSNR and SSIM against bits per pixel for each curve (name -> (curve, bits column)); return the Figure."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    for name, (curve, bits) in curves.items():
        curve = curve.sort_values(bits)
        style = "--" if "headerless" in name else "-"
        for ax, metric in zip(axes, ("PSNR", "SSIM")):
            ax.plot(curve[bits], curve[metric], style, marker="o", markersize=3, label=name)
    axes[0].axhspan(*band, color="0.9", zorder=0, label=f"target band {band[0]:g}-{band[1]:g} dB")
    for ax, metric in zip(axes, ("PSNR (dB)", "SSIM")):
        ax.set_xlabel("bits per pixel (bytes x 8 / 1,024 pixels)")
        ax.set_ylabel(metric)
        ax.set_xlim(0, 8)
        ax.grid(alpha=0.3)
    axes[0].set_ylim(18, 42)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def decoded_rows(images: torch.Tensor, rows: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Return {'original': images, **rows} with every row as uint8, for cu.show_rows."""
    return {"original": images, **{name: to_uint8(r) if r.is_floating_point() else r for name, r in rows.items()}}


# --------------------------------------------------------------------------- fitting and scoring chosen points
def fit_coder(encode: Callable, train: torch.Tensor, step: float) -> HistogramCoder:
    """Return the histogram coder of the training images' codes quantised with ``step``."""
    return HistogramCoder(quantise(codes_of(encode, train), step))


def score_chosen(chosen: "pd.DataFrame", codecs: dict[str, tuple[Callable, Callable]], train: torch.Tensor,
                 images: torch.Tensor) -> "pd.DataFrame":
    """Return the rows of ``code_curve`` for each chosen (model, step), scored on ``images``, sorted by bits."""
    import pandas as pd
    parts = [code_curve(*codecs[m], train, images, list(group["step"])).assign(model=m)
             for m, group in chosen.groupby("model", sort=False)]
    return pd.concat(parts, ignore_index=True).sort_values("bpp", ignore_index=True)
