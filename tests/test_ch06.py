"""Chapter 06 (denoising autoencoders): the learner's corruptions, denoiser and loop; filters, scores, the notebook."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from scipy import ndimage

import course_utils as cu
from course_utils.chapters import _ch06_scores as scores
from course_utils.chapters import ch06_denoising as ch06
from course_utils.chapters.ch01_feature_extractors import image_loader
from course_utils.chapters._ch06_scores import (beats_best_filter, choose_filter_parameter, corrupt_split,
                                                denoising_scores, gaussian_blur, image_scores, median_filter,
                                                per_image_psnr, plot_psnr_vs_sigma, show_worst_cases)
from course_utils.chapters.ch06_denoising import (Cutout, Denoiser, GaussianNoise, SaltAndPepper, corrupt,
                                                  train_epoch_denoising)
from conftest import stored_outputs_text

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "06_denoising_autoencoders.ipynb"


def _grey(n: int = 64, side: int = 32, value: float = 0.5) -> torch.Tensor:
    return torch.full((n, 1, side, side), value)


# --------------------------------------------------------------------------- corruptions
def test_gaussian_noise_has_the_requested_spread_and_zero_mean():
    x = _grey()  # mid-grey: at sigma 0.1 clipping happens 5 sigma away, i.e. practically never
    g = torch.Generator().manual_seed(0)
    noise = GaussianNoise(0.1)(x, generator=g) - x
    assert abs(float(noise.mean())) < 0.002
    assert float(noise.std()) == pytest.approx(0.1, rel=0.02)


def test_gaussian_noise_is_clipped_to_the_pixel_range_and_leaves_the_input_alone():
    x = torch.rand(32, 3, 16, 16)
    before = x.clone()
    noisy = GaussianNoise(0.5)(x)
    assert torch.equal(x, before)  # the clean batch (the target) is never modified in place
    assert float(noisy.min()) == 0.0 and float(noisy.max()) == 1.0
    # On mid-grey, sigma 0.5 pushes a value past 0 or 1 with probability P(|Z| > 1) = 0.317: it ends exactly at 0 or 1.
    grey = _grey(256)
    clipped = GaussianNoise(0.5)(grey, generator=torch.Generator().manual_seed(1))
    at_edges = float(((clipped == 0) | (clipped == 1)).float().mean())
    assert at_edges == pytest.approx(2 * (1 - 0.8413447), abs=0.01)
    assert float((clipped - grey).std()) < 0.45  # clipping shrinks the error: the noisy input scores higher


def test_a_noise_range_draws_one_level_per_image():
    x = _grey(400)
    noisy = GaussianNoise((0.05, 0.3))(x, generator=torch.Generator().manual_seed(2))
    levels = (noisy - x).flatten(1).std(1)
    assert float(levels.min()) > 0.04 and float(levels.max()) < 0.31
    assert float(levels.max() - levels.min()) > 0.2  # spread over the range, not one level for the whole batch


def test_salt_and_pepper_replaces_the_requested_share_of_pixels_in_every_channel():
    x = torch.full((64, 3, 32, 32), 0.5)
    noisy = SaltAndPepper(0.2)(x, generator=torch.Generator().manual_seed(3))
    changed = noisy != 0.5
    assert float(changed.float().mean()) == pytest.approx(0.2, abs=0.01)
    assert torch.equal(changed.all(1), changed.any(1))  # a pixel's channels change together
    assert set(noisy[changed].unique().tolist()) == {0.0, 1.0}
    assert float((noisy == 0).float().mean()) == pytest.approx(0.1, abs=0.01)


def test_cutout_blanks_exactly_one_square_per_image():
    x = torch.ones(50, 3, 32, 32)
    out = Cutout(8)(x, generator=torch.Generator().manual_seed(4))
    blank = (out == 0).all(1)  # N x H x W
    assert blank.flatten(1).sum(1).tolist() == [64] * 50
    for mask in blank[:5]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        assert len(rows) == len(cols) == 8 and rows.diff().eq(1).all() and cols.diff().eq(1).all()
    positions = {tuple(m.nonzero()[0].tolist()) for m in blank}
    assert len(positions) > 25  # a random place per image


def test_corrupt_is_fixed_by_its_seed_and_returns_floats_on_the_cpu():
    images = torch.randint(0, 256, (20, 1, 28, 28), dtype=torch.uint8)
    a = corrupt(images, GaussianNoise(0.2), seed=5, batch_size=7)
    assert a.dtype == torch.float32 and a.shape == images.shape
    assert torch.equal(a, corrupt(images, GaussianNoise(0.2), seed=5, batch_size=7))
    assert not torch.equal(a, corrupt(images, GaussianNoise(0.2), seed=6, batch_size=7))


def test_the_training_step_corrupts_the_inputs_only_and_keeps_the_target_clean():
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            seen["input"] = x.detach().clone()
            return torch.sigmoid(self.conv(x))

    def loss(out, target):
        seen["target"] = target.detach().clone()
        return torch.nn.functional.mse_loss(out, target)

    clean = torch.rand(8, 1, 16, 16)
    step = cu.TrainStep(Spy(), device="cpu", loss=loss, amp=False, channels_last=False,
                        input_transform=GaussianNoise(0.3))
    step(clean)
    assert torch.equal(seen["target"], clean)
    assert float((seen["input"] - clean).abs().mean()) > 0.1


def test_a_fixed_noise_level_draws_the_same_noise_as_one_normal_draw_per_value():
    # One level: nothing but randn is drawn, so a seeded copy is exactly x + sigma * randn, clipped.
    x = torch.rand(5, 3, 8, 8)
    expected = (x + 0.2 * torch.randn(x.shape, generator=torch.Generator().manual_seed(7))).clamp(0, 1)
    torch.testing.assert_close(GaussianNoise(0.2)(x, generator=torch.Generator().manual_seed(7)), expected)


def test_corrupt_takes_uint8_or_float_images_and_gives_the_same_floats():
    images = torch.randint(0, 256, (30, 1, 8, 8), dtype=torch.uint8)
    floats = images.float() / 255
    a = corrupt(images, SaltAndPepper(0.3), seed=1, batch_size=8)
    torch.testing.assert_close(a, corrupt(floats, SaltAndPepper(0.3), seed=1, batch_size=8))
    kept = (a == floats) | (a == 0) | (a == 1)
    assert bool(kept.all()) and float((a != floats).float().mean()) > 0.2


def test_the_denoiser_keeps_the_image_shape_with_a_code_larger_than_the_image():
    for channels, side, code_channels, parameters in ((1, 28, 8, 68_041), (3, 32, 32, 73_443)):
        model = Denoiser(channels, code_channels=code_channels)
        x = torch.rand(2, channels, side, side)
        with torch.no_grad():
            out, code = model(x), model.encode(x)
        assert out.shape == x.shape and float(out.min()) >= 0 and float(out.max()) <= 1
        assert tuple(code.shape) == (2, code_channels, side // 2, side // 2)
        assert code[0].numel() > x[0].numel()  # over-complete: more code values than pixel values
        assert cu.count_parameters(model) == parameters


def test_the_learners_loop_corrupts_the_input_keeps_the_target_and_fit_takes_the_same_steps():
    images = torch.randint(0, 256, (96, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    model = Denoiser(1, width=8, code_channels=2)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seen = []
    model.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach().clone()))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    noise = GaussianNoise(0.3)
    torch.manual_seed(1)
    losses = train_epoch_denoising(model, image_loader(images, 32, shuffle=True, seed=0), optimizer, noise)
    assert len(losses) == 3 and len(seen) == 3
    clean = next(iter(image_loader(images, 32, shuffle=True, seed=0)))[0]
    assert float((seen[0] - clean).abs().mean()) > 0.1  # the model saw a corrupted batch, not the clean one
    twin = Denoiser(1, width=8, code_channels=2)
    twin.load_state_dict(start)
    torch.manual_seed(1)
    history = cu.fit(twin, image_loader(images, 32, shuffle=True, seed=0), epochs=1, lr=2e-3, optimizer="adam",
                     schedule=None, amp=False, channels_last=False, fused=False, device="cpu", input_transform=noise,
                     progress=False)
    np.testing.assert_allclose(history.step_losses, losses, rtol=1e-5)
    # the target is the clean batch: the first loss is the model's output on the noisy input against clean x
    torch.manual_seed(1)
    noisy = noise(clean)
    probe = Denoiser(1, width=8, code_channels=2)
    probe.load_state_dict(start)
    probe.train()
    assert losses[0] == pytest.approx(float(torch.nn.functional.mse_loss(probe(noisy), clean).detach()), rel=1e-5)


# --------------------------------------------------------------------------- filters
def test_median_filter_matches_scipy():
    x = torch.rand(4, 3, 17, 19)
    for size in (3, 5):
        ours = median_filter(x, size).numpy()
        # torch's "reflect" padding (edge not repeated) is scipy's "mirror" mode
        reference = ndimage.median_filter(x.numpy(), size=(1, 1, size, size), mode="mirror")
        np.testing.assert_allclose(ours, reference)


def test_gaussian_blur_keeps_flat_images_and_smooths_noise():
    flat = torch.full((2, 3, 32, 32), 0.3)
    torch.testing.assert_close(gaussian_blur(flat, 1.5), flat)
    noise = torch.rand(2, 1, 32, 32)
    assert float(gaussian_blur(noise, 1.0).std()) < 0.5 * float(noise.std())


def test_the_median_filter_beats_blur_on_salt_and_pepper_and_blur_wins_on_gaussian_noise(fashion_test):
    clean = fashion_test.subset(300)
    psnr = lambda images: image_scores(images, clean, ssim=False)["psnr"]
    sp = corrupt_split(clean, SaltAndPepper(0.1))  # isolated outliers: a median ignores them, a blur spreads them
    assert psnr(median_filter(sp, 3)) > psnr(gaussian_blur(sp, 0.75)) + 0.5 > psnr(sp) + 3
    gauss = corrupt_split(clean, GaussianNoise(0.1))  # small noise everywhere: a median also erases fine stripes
    assert psnr(gaussian_blur(gauss, 0.5)) > psnr(median_filter(gauss, 3)) + 2


def test_filter_parameter_is_chosen_on_the_images_it_is_given():
    # Smooth images reward a wide blur, fine detail a narrow one: the choice follows the validation images passed in.
    y, x = torch.meshgrid(torch.linspace(0, 1, 32), torch.linspace(0, 1, 32), indexing="ij")
    smooth = ((x + y) / 2).expand(40, 1, 32, 32).clone()
    checker = ((torch.arange(32)[:, None] + torch.arange(32)[None]) % 2).float().expand(40, 1, 32, 32) * 0.6 + 0.2
    for clean, expected in ((smooth, max(scores.BLUR_SIGMAS)), (checker, min(scores.BLUR_SIGMAS))):
        noisy = corrupt(clean, GaussianNoise(0.2), seed=0)
        best, candidates = choose_filter_parameter("Gaussian blur", noisy, clean)
        assert best == expected and set(candidates) == set(scores.BLUR_SIGMAS)
        assert candidates[best] == max(candidates.values())


def test_denoising_scores_tune_filters_on_validation_and_score_on_test(monkeypatch, fashion_test):
    rest, val = fashion_test.split_off(300, seed=1)  # disjoint validation and test images
    test = rest.subset(150, seed=2)
    calls = []
    original = scores.choose_filter_parameter

    def spy(name, noisy_val, clean_val, params=None):
        calls.append(clean_val)
        return original(name, noisy_val, clean_val, params)

    monkeypatch.setattr(scores, "choose_filter_parameter", spy)
    table = denoising_scores(test, val, {}, sigmas=(0.2,), progress=False, validation_images=100)
    assert len(calls) == len(scores.FILTERS)
    for clean in calls:  # a fixed share of the validation images, none of the test split's
        assert len(clean) == 100 and torch.equal(clean.images, val.subset(100, seed=0).images)
    row = table[0.2]
    assert set(row) == {"noisy input", *scores.FILTERS}
    assert row["Gaussian blur"]["parameter"] in scores.BLUR_SIGMAS
    noisy = corrupt_split(test, GaussianNoise(0.2), seed=0)
    assert row["noisy input"]["psnr"] == pytest.approx(image_scores(noisy, test)["psnr"])


# --------------------------------------------------------------------------- scores
def test_image_scores_agree_with_evaluate(fashion_test):
    data = fashion_test.subset(128)
    model = cu.recommended_autoencoder(data.image_shape, 16)
    reference = cu.evaluate(model, data)
    ours = image_scores(cu.reconstruct(model, data), data)
    for key in ("mse", "psnr", "ssim"):
        assert ours[key] == pytest.approx(reference[key], rel=1e-4)


def test_noisy_input_psnr_before_clipping_is_the_formula_and_clipping_raises_it():
    x = _grey(64, value=0.5)
    for sigma in scores.SIGMAS:
        unclipped = x + sigma * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
        mse = float((unclipped - x).pow(2).mean())
        assert cu.psnr_from_mse(mse) == pytest.approx(-20 * math.log10(sigma), abs=0.1)
        clipped = corrupt(x, GaussianNoise(sigma), seed=0)
        assert image_scores(clipped, x, ssim=False)["psnr"] >= cu.psnr_from_mse(mse) - 0.05


def test_per_image_psnr_and_the_worst_cases_figure():
    clean = torch.full((6, 1, 8, 8), 0.5)
    restored = clean + torch.tensor([0.01, 0.3, 0.02, 0.2, 0.05, 0.1]).view(-1, 1, 1, 1)
    psnr = per_image_psnr(restored, clean)
    assert psnr.argsort()[:2].tolist() == [1, 3]
    assert float(psnr[0]) == pytest.approx(40.0, abs=1e-3)
    fig = show_worst_cases(clean, clean, restored, n=2)
    labels = [ax.get_ylabel() for ax in fig.axes]
    assert labels == ["original", "noisy", "denoised"]
    assert "10.5, 14.0" in fig.axes[-1].get_xlabel()  # worst first, PSNR of each shown
    plt.close(fig)


def test_plot_psnr_vs_sigma_labels_its_axes():
    row = {"noisy input": {"psnr": 10.0}, "denoiser": {"psnr": 20.0}}
    fig = plot_psnr_vs_sigma({"A": {0.1: row, 0.3: row}, "B": {0.1: row, 0.3: row}})
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert "sigma" in ax.get_xlabel() and "PSNR" in ax.get_ylabel() and len(ax.lines) == 2
    plt.close(fig)


def test_beats_best_filter_reads_the_table():
    def row(noisy, blur, median, model):
        return {"noisy input": {"psnr": noisy}, "Gaussian blur": {"psnr": blur}, "median filter": {"psnr": median},
                "denoiser": {"psnr": model}}
    table = {0.1: row(20, 24, 23, 25), 0.5: row(6, 16, 17, 16.5)}
    assert beats_best_filter(table, "denoiser") == {0.1: True, 0.5: False}
    assert scores.best_filter(table[0.5]) == "median filter"


def test_a_denoiser_beats_the_noisy_input_after_a_tiny_run(fashion_train, fashion_test):
    cu.seed_everything(0)
    train, test = fashion_train.subset(2000), fashion_test.subset(300)
    model = cu.ConvAutoencoder(28, 1, (16, 32), 8, "spatial", batch_norm=True)
    cu.fit(model, train, epochs=1, batch_size=32, lr=5e-3, progress=False, device="cpu",
           input_transform=GaussianNoise(0.3))
    noisy = corrupt_split(test, GaussianNoise(0.3))
    before = image_scores(noisy, test)["psnr"]
    after = image_scores(cu.reconstruct(model, noisy), test)["psnr"]
    assert after > before + 3


# --------------------------------------------------------------------------- learner errors
def test_corruption_settings_that_make_no_sense_say_how_to_fix_them():
    # The corruptions are the learner's plain PyTorch (no course_utils import): they raise ValueError with the fix.
    with pytest.raises(ValueError, match=r"needs 0 <= sigma .* e\.g\. 0\.1"):
        GaussianNoise(-0.1)
    with pytest.raises(ValueError, match="low <= high"):
        GaussianNoise((0.5, 0.1))
    with pytest.raises(ValueError, match="between 0 and 1"):
        SaltAndPepper(10)
    with pytest.raises(ValueError, match="whole number"):
        Cutout(0)
    with pytest.raises(ValueError, match="at most 32"):
        Cutout(40)(torch.rand(2, 3, 32, 32))


def test_filter_settings_that_do_not_exist_say_how_to_fix_them():
    with pytest.raises(cu.CourseError, match="odd"):
        median_filter(torch.rand(1, 1, 8, 8), 4)
    with pytest.raises(cu.CourseError, match="positive"):
        gaussian_blur(torch.rand(1, 1, 8, 8), 0)
    with pytest.raises(cu.CourseError, match="Unknown filter"):
        choose_filter_parameter("bilateral", torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))


def test_scoring_images_against_the_wrong_originals_is_caught():
    with pytest.raises(cu.CourseError, match="differ in shape"):
        image_scores(torch.rand(10, 1, 28, 28), torch.rand(12, 1, 28, 28))


# --------------------------------------------------------------------------- the stored notebook


def test_stored_notebook_is_a_clean_laptop_run_that_prints_its_verdict():
    nb = json.loads(NOTEBOOK.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), "every code cell was executed"
    assert not any(o["output_type"] == "error" for c in code for o in c["outputs"])
    text = stored_outputs_text(nb)
    assert "profile=laptop" in text
    assert "the denoiser beats the best classical filter at every sigma" in text
    sources = "\n".join("".join(c["source"]) for c in code)
    assert "input_transform=" in sources and "denoising_scores" in sources
    assert sum("".join(c["source"]).startswith("# NBVAL_CHECK_OUTPUT") for c in code) >= 2


def test_the_stored_verdict_follows_from_the_stored_table_and_the_prose_says_the_same():
    nb = json.loads(NOTEBOOK.read_text())
    text = stored_outputs_text(nb)
    rows = [line.split() for line in text.splitlines() if line.split()[:1] and line.split()[-1:]
            and _is_float_row(line)]
    # the combined PSNR table: [dataset] sigma noisy blur median plainAE denoiser
    table = [list(map(float, r[-5:])) for r in rows if len(r) in (6, 7)]
    assert len(table) == 8, "the one table has 4 noise levels for each of the 2 datasets"
    met = all(denoiser > max(blur, median) for _, blur, median, _, denoiser in table)
    verdict = re.search(r"target \(every sigma, both datasets\): (met|missed)", text).group(1)
    assert verdict == ("met" if met else "missed")
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert ("**Met" in prose) == met and ("**Missed" in prose) == (not met)


def _is_float_row(line: str) -> bool:
    try:
        [float(v) for v in line.split()[-5:]]
        return "sigma" not in line and "." in line.split()[-1] and len(line.split()) >= 6
    except ValueError:
        return False
