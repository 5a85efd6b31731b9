"""Chapter 03 (transposed convolutions): the chapter's claims, the learner's saved code and the chapter's plumbing.

The learner's stages, overlap map and decoder come from the generated module ``ch03_transposed_convolutions``; the
comparison's models (``chapter_model``, ``DECODERS``) and the grid measurements from ``_ch03_comparison``.
"""
from __future__ import annotations

import functools
import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import course_utils as cu
from course_utils.chapters import _ch03_comparison as plumbing
from course_utils.chapters import ch03_transposed_convolutions as ch03
from course_utils.chapters._ch03_comparison import DECODERS, chapter_model


# --------------------------------------------------------------------------- the chapter's claims
def test_output_size_formula_matches_pytorch_everywhere():
    checked = 0
    for size, k, s in itertools.product((1, 4, 7, 8, 14), (1, 2, 3, 4, 5), (1, 2, 3)):
        for p, op in itertools.product(range(k), range(s)):
            if (size - 1) * s - 2 * p + k + op <= 0:
                continue  # PyTorch refuses layers with an empty output
            layer = nn.ConvTranspose2d(1, 1, k, stride=s, padding=p, output_padding=op)
            real = layer(torch.zeros(1, 1, size, size)).shape[-1]
            assert real == cu.conv_transpose_output_size(size, k, s, p, op), (size, k, s, p, op)
            checked += 1
    assert checked > 400


@pytest.mark.parametrize("k, s", [(k, s) for s in (2, 3) for k in range(s, s + 6)])
def test_transposed_padding_grows_real_layers_exactly_stride_times(k, s):
    p, op = cu.transposed_padding(k, s)
    layer = nn.ConvTranspose2d(2, 2, k, stride=s, padding=p, output_padding=op)
    for size in (4, 7, 8):
        assert layer(torch.zeros(1, 2, size, size)).shape[-2:] == (s * size, s * size)


def test_paperspace_decoder_needs_its_output_padding_and_kapilsh_does_not():
    paperspace = cu.PaperspaceAutoencoder()
    x = torch.zeros(2, 3, 32, 32)
    assert paperspace(x).shape == x.shape
    for layer in paperspace.decoder:
        if isinstance(layer, nn.ConvTranspose2d) and layer.stride == (2, 2):
            assert layer.output_padding == (1, 1)
            layer.output_padding = (0, 0)
    assert paperspace(x).shape == (2, 3, 29, 29)
    kapilsh = cu.KapilshAutoencoder()
    assert all(layer.padding == (0, 0) and layer.output_padding == (0, 0)
               for layer in kapilsh.decoder if isinstance(layer, nn.ConvTranspose2d))
    assert kapilsh(torch.zeros(2, 1, 28, 28)).shape == (2, 1, 28, 28)
    # Both 15 and 16 become 8 under the stride-2 convolution: the ambiguity output_padding resolves.
    assert cu.conv_output_size(15, 3, 2, 1) == cu.conv_output_size(16, 3, 2, 1) == 8


def test_one_pixel_stamps_the_kernel_at_stride_times_its_position():
    torch.manual_seed(0)
    for k, s, p in [(3, 2, 0), (4, 2, 1), (2, 2, 0), (5, 3, 1)]:
        w = torch.randn(1, 1, k, k)
        x = torch.zeros(1, 1, 6, 6)
        x[0, 0, 3, 2] = 1.0
        y = F.conv_transpose2d(x, w, stride=s, padding=p)[0, 0]
        r, c = s * 3 - p, s * 2 - p
        assert torch.allclose(y[r:r + k, c:c + k], w[0, 0])
        assert float(y.abs().sum()) == pytest.approx(float(w.abs().sum()), rel=1e-5)  # nothing else


@pytest.mark.parametrize("k, s, p, op", [(3, 2, 1, 1), (4, 2, 1, 0), (2, 2, 0, 0), (5, 2, 2, 1), (3, 3, 0, 2)])
def test_transposed_conv_is_zero_insertion_then_flipped_convolution_and_the_adjoint(k, s, p, op):
    torch.manual_seed(1)
    x, w = torch.randn(2, 4, 7, 7), torch.randn(4, 5, k, k)
    reference = F.conv_transpose2d(x, w, stride=s, padding=p, output_padding=op)
    spread = torch.zeros(2, 4, 6 * s + 1, 6 * s + 1)
    spread[..., ::s, ::s] = x
    q = k - 1 - p
    as_conv = F.conv2d(F.pad(spread, (q, q + op, q, q + op)), w.flip(-2, -1).transpose(0, 1))
    assert torch.allclose(reference, as_conv, atol=1e-4)
    y = torch.randn_like(reference)
    assert torch.allclose((F.conv2d(y, w, stride=s, padding=p) * x).sum(), (y * reference).sum(), rtol=1e-4)


@pytest.mark.parametrize("seed", [0, 1])
def test_untrained_resize_decoders_keep_a_flat_input_flat_and_transposed_ones_do_not(seed):
    for name in DECODERS:
        cu.seed_everything(seed)
        decoder = chapter_model(name).decoder.eval()
        with torch.no_grad():
            out = decoder.net[2:-1](torch.ones(1, 64, 8, 8))[0, :, 6:-6, 6:-6]  # the stages and the last conv
        spread = float((out - out.mean(dim=(1, 2), keepdim=True)).abs().max())
        if name.startswith("transposed"):
            assert spread > 1e-3, name
        else:
            assert spread < 1e-6, name


def test_chapter_models_share_code_size_and_differ_as_the_notebook_says():
    params, flops = {}, {}
    for name in DECODERS:
        model = chapter_model(name)
        assert isinstance(model.decoder, ch03.GrowingDecoder)
        x = torch.rand(2, 3, 32, 32)
        assert model.encode(x).shape == (2, 4, 8, 8)  # 256 values per image
        assert model(x).shape == (2, 3, 32, 32)
        params[name] = cu.count_parameters(model)
        flops[name] = cu.layer_table(model.decoder, (4, 8, 8), receptive_field=False)["MFLOPs"].sum()
    assert params == {"transposed k=2": 37_287, "transposed k=3": 52_647, "transposed k=4": 74_151,
                      "nearest + conv": 52_647, "bilinear + conv": 52_647}
    # Same weights per layer as k=3, but the 3x3 convolutions run at the output resolution: 4x the stages' FLOPs.
    assert flops["nearest + conv"] == pytest.approx(flops["bilinear + conv"])
    table = cu.layer_table(chapter_model("transposed k=3").decoder, (4, 8, 8), receptive_field=False)
    fixed = table["MFLOPs"].iloc[0] + table["MFLOPs"].iloc[-2]  # the code's and the image's convolutions
    assert flops["nearest + conv"] - fixed == pytest.approx(4 * (flops["transposed k=3"] - fixed), rel=1e-6)
    with pytest.raises(cu.CourseError, match="compares the decoders"):
        chapter_model("transposed k=5")


def test_trained_transposed_decoders_put_their_jumps_on_a_grid_and_bilinear_does_not(cifar_test):
    train, test = cifar_test.subset(2048, seed=3).subset(1536, seed=0), cifar_test.subset(512, seed=4)
    runs = plumbing.compare_over_seeds({name: functools.partial(chapter_model, name) for name in
                                        ("transposed k=2", "transposed k=3", "transposed k=4", "bilinear + conv")},
                                       train, test, seeds=[0], epochs=2, batch_size=128, device="cpu")
    contrast = {name: plumbing.grid_contrast(plumbing.edge_map(cu.reconstruct(model, test)), 4, border=2)
                for name, model in runs[0].models.items()}
    reference = plumbing.grid_contrast(plumbing.edge_map(test), 4, border=2)  # real photos: about 0.1
    assert contrast["bilinear + conv"] < 2 * reference
    for k in (2, 3, 4):
        assert contrast[f"transposed k={k}"] > 5 * reference, contrast


def test_compare_over_seeds_trains_every_model_for_every_seed_like_compare_models(fashion_test, capsys):
    data = fashion_test.subset(256, seed=1)
    build = lambda: cu.ConvAutoencoder(28, 1, (4, 8), latent=2, bottleneck="spatial")  # noqa: E731
    builders = {"a": build, "b": build}
    runs = plumbing.compare_over_seeds(builders, data, data, seeds=[0, 1], epochs=1, batch_size=64, device="cpu")
    assert sorted(runs) == [0, 1] and all(list(run.results) == ["a", "b"] for run in runs.values())
    alone = cu.compare_models({"b": build}, data, data, epochs=1, batch_size=64, seed=1, progress=False, device="cpu")
    assert runs[1].results["b"]["mse"] == pytest.approx(alone.results["b"]["mse"], rel=1e-5)  # same seed, same run
    assert runs[0].results["a"]["mse"] != runs[1].results["a"]["mse"]  # another seed, another run
    assert "4/4" in capsys.readouterr().err  # one bar for the four models
    with pytest.raises(cu.CourseError, match="at least one seed"):
        plumbing.compare_over_seeds(builders, data, data, seeds=[], epochs=1)


# --------------------------------------------------------------------------- helpers
def _taps_1d(size: int, kernel_size: int, stride: int, padding: int, output_padding: int) -> torch.Tensor:
    """Count, by brute force, the (input pixel, kernel tap) pairs that land on each output pixel."""
    out = cu.conv_transpose_output_size(size, kernel_size, stride, padding, output_padding)
    counts = torch.zeros(out)
    for i in range(size):
        for j in range(kernel_size):
            o = stride * i + j - padding
            if 0 <= o < out:
                counts[o] += 1
    return counts


@pytest.mark.parametrize("kernel_size, stride", [(2, 2), (3, 2), (4, 2), (5, 2), (3, 3), (5, 3), (6, 3)])
def test_overlap_map_counts_every_kernel_tap_landing_on_each_pixel(kernel_size, stride):
    padding, output_padding = cu.transposed_padding(kernel_size, stride)
    counts = _taps_1d(6, kernel_size, stride, padding, output_padding)
    expected = counts[:, None] * counts[None, :]  # the 2-D count is the product of the 1-D counts
    got = ch03.overlap_map(ch03.TransposedStage(1, 1, kernel_size, stride), size=6)
    assert got.shape == (6 * stride, 6 * stride)
    assert torch.equal(got, expected)


def test_overlap_is_even_exactly_when_the_stride_divides_the_kernel():
    for stride in (2, 3):
        for kernel_size in range(stride, 3 * stride + 1):
            counts = ch03.overlap_map(ch03.TransposedStage(1, 1, kernel_size, stride), size=8)
            contrast = plumbing.grid_contrast(counts, stride, border=2 * stride)
            assert (contrast == 0) == (kernel_size % stride == 0), (kernel_size, stride, contrast)
    # 3x3 stride 2: a 2x2 block gets 1, 2, 2 and 4 taps => (4 - 1) / 2.25
    counts = ch03.overlap_map(ch03.TransposedStage(1, 1, 3), size=8)
    assert plumbing.grid_contrast(counts, 2, border=2) == pytest.approx(4 / 3)


def test_resize_then_convolve_overlaps_evenly_and_stacks_keep_a_k3_pattern():
    for mode in ("nearest", "bilinear"):
        one = ch03.overlap_map(ch03.ResizeStage(1, 1, mode), size=6)
        assert one.shape == (12, 12) and plumbing.grid_contrast(one, 2, border=2) == 0
        assert torch.all(one[2:-2, 2:-2] == 9)  # every interior pixel gets all 9 taps
    stacked = ch03.overlap_map(ch03.TransposedStage(1, 1, 3), size=4, layers=3)  # 4x4 => 32x32 like three stages
    assert stacked.shape == (32, 32)
    assert plumbing.grid_contrast(stacked, 8, border=8) > plumbing.grid_contrast(stacked, 2, border=8) > 1


@pytest.mark.parametrize("k, s", [(k, s) for s in (2, 3) for k in range(s, s + 5)])
def test_transposed_stage_pads_like_the_package_and_grows_exactly_stride_times(k, s):
    stage = ch03.TransposedStage(3, 5, k, s)
    layer = stage.net[0]
    assert (layer.padding[0], layer.output_padding[0]) == cu.transposed_padding(k, s)
    for size in (4, 7, 8):
        with torch.no_grad():
            out = stage(torch.randn(2, 3, size, size))
        assert out.shape == (2, 5, s * size, s * size) and float(out.min()) >= 0  # ends with a ReLU


@pytest.mark.parametrize("name", list(DECODERS))
def test_growing_decoder_computes_what_the_packages_conv_decoder_computes(name):
    """After the code's convolution, the learner's decoder is cu.ConvDecoder's layers: copy the weights, same output."""
    ours = ch03.GrowingDecoder(DECODERS[name])
    kwargs = dict(upsample="transposed", kernel_size=int(name[-1])) if name.startswith("transposed") else \
        dict(upsample=name.split()[0])
    theirs = cu.ConvDecoder(3, (64, 32), **kwargs)
    mine = list(ours.net[2:].parameters())
    assert [p.shape for p in mine] == [p.shape for p in theirs.parameters()]
    with torch.no_grad():
        for a, b in zip(mine, theirs.parameters()):
            a.copy_(b)
        features = torch.randn(2, 64, 8, 8)
        assert torch.allclose(ours.net[2:](features), theirs(features), atol=1e-6)
    resize = ch03.ResizeStage(2, 4, "bilinear", stride=3)
    assert resize(torch.rand(1, 2, 5, 5)).shape == (1, 4, 15, 15)


def test_error_map_averages_to_the_test_mse_of_evaluate(fashion_test):
    data = fashion_test.subset(300, seed=1)
    cu.seed_everything(0)
    model = cu.ConvAutoencoder(28, 1, (8, 16), latent=2, bottleneck="spatial", kernel_size=3)
    cu.fit(model, data, epochs=1, batch_size=64, progress=False, device="cpu")
    emap = plumbing.error_map(model, data, batch_size=128)  # batches not aligned with the data: 128, 128, 44
    assert emap.shape == (28, 28) and torch.all(emap >= 0)
    assert float(emap.mean()) == pytest.approx(cu.evaluate(model, data)["mse"], rel=1e-4)
    # The border of the image is reconstructed differently from the centre: the map is not flat.
    assert float(emap.std()) > 0.05 * float(emap.mean())


def test_grid_contrast_finds_a_checkerboard_added_to_real_images_but_not_a_trend(cifar_test):
    images = cu.to_float(cifar_test.images[:1000])
    clean = images.pow(2).mean(dim=(0, 1))  # a mean "energy" map of real photos: no grid in it
    assert plumbing.fold_tiles(clean, 4).mean() == pytest.approx(float(clean.mean()), rel=1e-5)
    base = plumbing.grid_contrast(clean, 2, border=2)
    sign = torch.tensor([[1.0, -1.0], [-1.0, 1.0]]).repeat(16, 16)  # +-1 checkerboard, period 2
    stamped = (images + 0.05 * sign).clamp(0, 1).pow(2).mean(dim=(0, 1))
    assert base < 0.02 and plumbing.grid_contrast(stamped, 2, border=2) > 10 * base
    # A smooth trend (brighter towards the bottom) is not a grid: the local mean divides it out.
    ramp = clean * torch.linspace(1.0, 3.0, 32)[:, None]
    assert plumbing.grid_contrast(ramp, 4, border=2) < 2 * plumbing.grid_contrast(clean, 4, border=2) + 0.01
    tile = plumbing.grid_tile(stamped, 2, border=2)
    assert tile.shape == (2, 2) and tile.mean() == pytest.approx(1.0, abs=0.02)
    assert plumbing.fold_tiles(cifar_test.images[:4], 8).shape == (8, 8)  # uint8 input is scaled to [0, 1]
    with pytest.raises(cu.CourseError, match="must divide"):
        plumbing.fold_tiles(clean, 5)
    with pytest.raises(cu.CourseError, match="zero-mean"):
        plumbing.grid_contrast(torch.zeros(8, 8))
    with pytest.raises(cu.CourseError, match="2 periods wide"):
        plumbing.grid_contrast(clean, 8, border=10)


def test_edge_map_of_real_photos_is_even_and_a_blocky_copy_is_not(cifar_test):
    photos = cifar_test.subset(1000, seed=2)
    emap = plumbing.edge_map(photos)
    assert emap.shape == (31, 31)
    x = photos.images[:3].float() / 255  # the formula, by hand, at one position
    by_hand = ((x[..., 5, 8] - x[..., 5, 7]) ** 2 + (x[..., 6, 7] - x[..., 5, 7]) ** 2).mean()
    assert float(plumbing.edge_map(photos.images[:3])[5, 7]) == pytest.approx(float(by_hand), rel=1e-5)
    # Shrink and regrow by nearest-neighbour: every 2x2 block is flat, all jumps sit on block borders.
    blocky = F.interpolate(F.avg_pool2d(photos.images.float(), 2), scale_factor=2, mode="nearest")
    assert plumbing.grid_contrast(emap, 2, border=2) < 0.05 < 1.0 < plumbing.grid_contrast(plumbing.edge_map(blocky), 2, border=2)


def test_plot_over_seeds_starts_at_zero_and_shows_every_seed():
    import matplotlib.pyplot as plt

    fig = plumbing.plot_over_seeds({"a": [0.010, 0.012, 0.011], "b": [0.020, 0.018, 0.022]})
    ax = fig.axes[0]
    assert ax.get_ylim()[0] == 0  # bars compare honestly: no truncated axis
    assert [round(p.get_height(), 6) for p in ax.patches] == [0.011, 0.02]  # bars at the means
    dots = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert sorted(round(v, 3) for line in dots for v in line.get_ydata()) == [0.01, 0.011, 0.012, 0.018, 0.02, 0.022]
    assert "3 seeds" in ax.get_title() and ax.get_ylabel()
    plt.close(fig)
    with pytest.raises(cu.CourseError, match="one score per model"):
        plumbing.plot_over_seeds({"a": []})
