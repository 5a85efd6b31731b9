"""Chapter 11: the codec a learner writes (saved from the notebook): the quantiser, the histogram coder, the bitstream
round trip and the rate term; and the chapter's plumbing: JPEG and WebP bytes with and without their headers, the
curves compared at equal PSNR.

The learner's code comes from ``course_utils/chapters/ch11_codec.py``, generated from the notebook's ``#@save`` cells
(tests/test_save_cells.py keeps the two in sync); the exercises' checks are proven in tests/test_exercises.py.
"""
from __future__ import annotations

import io
import math
import struct

import numpy as np
import pandas as pd
import pytest
import torch

import course_utils as cu
from course_utils.chapters._ch11_codecs import (bpp_at, code_point, decode_file, equal_psnr_table, fit_coder,
                                                ideal_curve, jpeg_file, jpeg_header_bytes, jpeg_segments,
                                                model_codec, pareto, pca_codec, scores, tiles, untile, verdicts,
                                                webp_file, webp_payload)
from course_utils.chapters.ch11_codec import (FactorizedPrior, HistogramCoder, compress, decompress, dequantise,
                                              fine_tune_for_rate, quantise, rate_distortion_loss)

from conftest import needs_cifar


def _images(n: int = 16, seed: int = 0) -> torch.Tensor:
    """Smooth random uint8 colour images (blurred noise compresses like photos, unlike white noise)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 8, 8, generator=g)
    x = torch.nn.functional.interpolate(x, size=32, mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8)


# --------------------------------------------------------------------------- the quantiser and the coder
def test_the_quantiser_rounds_to_the_nearest_multiple_and_errs_by_at_most_half_a_step():
    z = torch.randn(100, 64) * 5
    for step in (0.5, 1.0, 3.0):
        symbols = quantise(z, step)
        assert symbols.dtype == torch.int64
        assert (dequantise(symbols, step) - z).abs().max() <= step / 2 + 1e-5
    assert quantise(torch.tensor([[-3.1, -0.4, 0.9, 2.6]]), 2.0).tolist() == [[-2, 0, 0, 1]]


def test_the_histogram_coder_round_trips_and_its_bytes_match_the_ideal_bits():
    g = torch.Generator().manual_seed(0)
    train = torch.round(torch.randn(5000, 32, generator=g) * torch.linspace(0.3, 6, 32)).long()
    coder = HistogramCoder(train)
    assert coder.low == int(train.min()) and coder.high == int(train.max())
    torch.testing.assert_close(coder.probs.sum(1), torch.ones(32, dtype=torch.float64))
    assert (coder.probs > 0).all()  # the floor: every symbol can be written
    rows = torch.round(torch.randn(200, 32, generator=g) * torch.linspace(0.3, 6, 32)).long()
    rows[0, 0] = coder.high + 50  # outside the alphabet: clamped, not an error
    ideal = coder.ideal_bits(rows) / 8
    for row, bits in zip(rows, ideal):
        data = coder.encode(row)
        assert torch.equal(coder.decode(data), coder.clip(row))
        assert bits - 1e-6 <= len(data) <= bits + 8  # the ideal bits, rounded up to 32-bit words (plus one)
    # the ideal bits are -log2 of the histogram's probabilities, computed by hand for one row
    row = rows[1]
    by_hand = -sum(math.log2(coder.probs[d, int(row[d]) - coder.low]) for d in range(32))
    assert float(coder.ideal_bits(row[None])[0]) == pytest.approx(by_hand)


def test_the_round_trip_decodes_exactly_the_images_the_chapter_scores():
    torch.manual_seed(0)
    model = cu.recommended_autoencoder((3, 32, 32), latent=32).eval()
    encode, decode = model_codec(model)
    train, images = _images(64, seed=1), _images(12, seed=2)
    coder = fit_coder(encode, train, 0.5)
    x = cu.to_float(images)
    streams = compress(encode, x, 0.5, coder)
    assert all(isinstance(s, bytes) and len(s) % 4 == 0 and len(s) > 0 for s in streams)
    decoded = decompress(decode, streams, 0.5, coder)
    with torch.no_grad():  # the same images without any bytes: clamp, dequantise, decode
        direct = decode(dequantise(coder.clip(quantise(encode(x), 0.5)), 0.5)).clamp(0, 1)
    assert torch.equal(decoded, direct)
    point = code_point(encode, decode, coder, images, 0.5)  # what the chapter's tables report
    assert point["PSNR"] == pytest.approx(scores(decoded, images)["PSNR"])
    assert point["bytes"] == pytest.approx(np.mean([len(s) for s in streams]))
    assert point["bpp"] == pytest.approx(point["bytes"] * 8 / 1024)
    fast = ideal_curve(encode, decode, train, images, [0.5])  # the validation shortcut scores the same images
    assert fast["PSNR"][0] == pytest.approx(point["PSNR"], abs=1e-4)
    assert fast["ideal bytes"][0] == pytest.approx(point["ideal bytes"])


def test_pca_is_a_codec_through_the_same_round_trip():
    images = _images(80, seed=3)
    pca = cu.fit_pca(cu.data.ImageData(images, torch.zeros(80, dtype=torch.long), ("x",)), 20)
    encode, decode = pca_codec(pca)
    coder = fit_coder(encode, images, 0.05)
    point = code_point(encode, decode, coder, images[:10], 0.05)
    exact = scores(cu.metrics.pca_reconstruct(pca, images[:10]), images[:10])["PSNR"]  # PCA without quantising
    assert point["PSNR"] == pytest.approx(exact, abs=0.3) and point["bytes"] < 3072 / 4


# --------------------------------------------------------------------------- the rate term
def test_the_rate_term_sends_gradients_to_the_encoder_through_the_noise_and_to_the_entropy_model():
    torch.manual_seed(0)
    model = cu.recommended_autoencoder((3, 32, 32), latent=16)
    prior = FactorizedPrior(16)
    x = cu.to_float(_images(4))
    loss, mse, bpp = rate_distortion_loss(model, prior, x, step=2.0, lam=1.0)
    bpp.backward()  # the rate alone
    first = next(model.encoder.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0
    assert prior.loc.grad.abs().sum() > 0 and prior.log_scale.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.decoder.parameters())  # rate skips the decoder
    assert loss.item() == pytest.approx(mse.item() + bpp.item())


def test_the_prior_gives_probabilities_of_unit_bins_and_the_noise_is_uniform():
    prior = FactorizedPrior(3, scale=1.5)
    with torch.no_grad():
        prior.loc.copy_(torch.tensor([0.0, 2.0, -1.0]))
    grid = torch.arange(-60, 61, dtype=torch.float).repeat(3, 1).T  # every integer bin
    probs = torch.stack([2.0 ** -prior.bits(grid[i:i + 1]) for i in range(len(grid))])  # bits of one row = sum of 3
    per_dim = torch.stack([torch.sigmoid((grid[:, d] + 0.5 - prior.loc[d]) / 1.5)
                           - torch.sigmoid((grid[:, d] - 0.5 - prior.loc[d]) / 1.5) for d in range(3)], 1)
    torch.testing.assert_close(probs.squeeze(1), per_dim.prod(1).detach(), rtol=1e-4, atol=1e-12)
    assert per_dim.sum(0).detach().numpy() == pytest.approx([1, 1, 1], abs=1e-6)  # the bins cover all the mass
    torch.manual_seed(0)
    model = torch.nn.Identity()
    model.encode, model.decode = (lambda x: x.flatten(1)), (lambda y: y.view(-1, 1, 100, 100))
    x = torch.zeros(1, 1, 100, 100)
    _, mse, _ = rate_distortion_loss(model, FactorizedPrior(10_000), x, step=1.0, lam=0.0)
    assert mse.item() == pytest.approx(1 / 12, rel=0.05)  # the variance of U[-0.5, 0.5)


def test_fine_tuning_for_rate_lowers_the_rate_term():
    torch.manual_seed(0)
    model = cu.recommended_autoencoder((3, 32, 32), latent=16)
    prior = FactorizedPrior(16)
    images = _images(64)
    losses = fine_tune_for_rate(model, prior, images, step=1.0, lam=1.0, steps=60, batch_size=16, lr=1e-2)
    assert len(losses) == 60 and not model.training
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


# --------------------------------------------------------------------------- JPEG and WebP bytes
def test_a_jpegs_header_is_everything_before_the_sos_marker_walked_segment_by_segment():
    image = _images(1)[0]
    for quality in (10, 50, 95):
        data = jpeg_file(image, quality)
        segments = jpeg_segments(data)
        assert sum(s["bytes"] for s in segments) == len(data)  # the segments tile the file
        assert [s["marker"] for s in segments][:2] == ["SOI", "APP0"] and "DQT" in [s["marker"] for s in segments]
        header = jpeg_header_bytes(data)
        assert data[header:header + 2] == b"\xff\xda" and data[-2:] == b"\xff\xd9"
        for s in segments[1:-1]:  # each segment starts with FF and its marker, and its length field is right
            assert data[s["offset"]] == 0xFF
            assert struct.unpack(">H", data[s["offset"] + 2:s["offset"] + 4])[0] == s["bytes"] - 2
        assert 500 < header < len(data)  # a 32x32 JPEG is mostly header: the standard tables in full
    # a comment holding the bytes FF DA does not fool the walk
    buffer = io.BytesIO()
    from PIL import Image
    Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=50, comment=b"x\xff\xday")
    data = buffer.getvalue()
    assert data.find(b"\xff\xda") < jpeg_header_bytes(data)
    assert data[jpeg_header_bytes(data):jpeg_header_bytes(data) + 2] == b"\xff\xda"
    assert "COM" in [s["marker"] for s in jpeg_segments(data)]


def test_a_webps_payload_is_the_vp8_chunk_without_the_riff_container():
    image = _images(1)[0]
    data = webp_file(image, 50)
    payload = webp_payload(data)
    assert data[:4] == b"RIFF" and data[8:16] == b"WEBPVP8 "
    assert len(payload) == len(data) - 20 or len(payload) == len(data) - 21  # 12 + 8 header bytes (+ 1 pad byte)
    assert payload[3:6] == b"\x9d\x01\x2a"  # VP8's key-frame start code
    assert decode_file(data).shape == (3, 32, 32)


def test_files_that_are_not_what_they_claim_raise_course_errors():
    with pytest.raises(cu.CourseError, match="not a JPEG"):
        jpeg_segments(b"RIFF....")
    with pytest.raises(cu.CourseError, match="not a WebP"):
        webp_payload(b"\xff\xd8\xff\xe0")
    lossless = io.BytesIO()
    from PIL import Image
    Image.fromarray(_images(1)[0].permute(1, 2, 0).numpy()).save(lossless, "WEBP", lossless=True)
    with pytest.raises(cu.CourseError, match="lossless=False"):
        webp_payload(lossless.getvalue())
    with pytest.raises(cu.CourseError, match="uint8 colour image"):
        jpeg_file(torch.rand(3, 32, 32), 50)


# --------------------------------------------------------------------------- curves at equal PSNR
def test_equal_psnr_interpolates_on_the_pareto_front_and_never_extrapolates():
    curve = pd.DataFrame({"bpp": [0.5, 1.0, 1.5, 2.0, 3.0], "PSNR": [24.0, 26.0, 25.0, 28.0, 27.0]})
    front = pareto(curve)
    assert front["bpp"].tolist() == [0.5, 1.0, 2.0]  # the points that raise the PSNR
    assert bpp_at(curve, 25.0) == pytest.approx(0.75)
    assert bpp_at(curve, 27.0) == pytest.approx(1.5)
    assert math.isnan(bpp_at(curve, 29.0)) and math.isnan(bpp_at(curve, 23.0))
    other = pd.DataFrame({"bpp": [1.0, 2.0], "PSNR": [24.0, 28.0]})
    table = equal_psnr_table({"ours": (curve, "bpp"), "theirs": (other, "bpp")}, [24.0, 26.0, 28.0])
    assert table.loc[26.0, "theirs"] == pytest.approx(1.5)
    assert verdicts(table, "ours") == ["vs theirs: fewer bits at 24, 26 dB, more at 28 dB (ours / theirs from 0.50x "
                                       "to 1.00x)"]


def test_tiles_cut_and_reassemble_a_photo():
    photo = torch.arange(3 * 64 * 96).view(3, 64, 96)
    parts = tiles(photo)
    assert parts.shape == (6, 3, 32, 32)
    assert torch.equal(parts[1], photo[:, :32, 32:64])
    assert torch.equal(untile(parts, 64, 96), photo)


@needs_cifar
def test_the_cifar_copy_re_encodes_almost_losslessly_at_one_jpeg_quality():
    """The data's JPEG past (section 3): quality 75 gives back nearly the same pixels, its neighbours do not."""
    from course_utils.chapters._ch11_codecs import reencoding_psnr
    images = cu.load_dataset("cifar10", "test", profile=cu.get_profile("smoke")).images[:100]
    psnr = reencoding_psnr(images, [70, 75, 80])
    assert psnr[75] > 45 and psnr[75] > psnr[70] + 5 and psnr[75] > psnr[80] + 5
