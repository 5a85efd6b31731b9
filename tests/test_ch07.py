"""Chapter 07 (anomaly detection): the learner's score, ROC-AUC and threshold, one-class runs, PCA, OOD inputs."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from torch import nn

import course_utils as cu
from course_utils.chapters import _ch07_experiments as ch07x
from course_utils.chapters.ch07_anomaly_detection import anomaly_scores, roc_auc, threshold_at, threshold_rates

from conftest import needs_fashion, stored_outputs_text

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "07_anomaly_detection.ipynb"


# --------------------------------------------------------------------------- the anomaly score
def _batchnorm_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),  # 1x8x8 => 4x8x8
                          nn.Conv2d(4, 1, 3, padding=1), nn.Sigmoid())  # 4x8x8 => 1x8x8
    with torch.no_grad():
        model(torch.rand(64, 1, 8, 8) * 3)  # training mode: running statistics unlike any batch's own
    return model.train()


def test_anomaly_scores_are_per_image_errors_in_eval_mode_without_gradients():
    images = torch.randint(0, 256, (37, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    model = _batchnorm_model()
    scores = anomaly_scores(model, images, batch_size=10)
    assert scores.shape == (37,) and scores.dtype == torch.float32 and not scores.requires_grad
    assert not model.training  # left in evaluation mode
    assert torch.allclose(scores, cu.per_image_errors(model, images), atol=1e-6)  # the package's score
    x = images.float() / 255
    with torch.no_grad():
        by_hand = ((model(x) - x) ** 2).mean((1, 2, 3))
    assert torch.allclose(scores, by_hand, atol=1e-6)
    # in eval mode an image's score does not depend on its batch: one image alone scores the same
    assert torch.allclose(anomaly_scores(model, images[5:6]), scores[5:6], atol=1e-6)
    with torch.no_grad():
        train_mode = ((model.train()(x) - x) ** 2).mean((1, 2, 3))  # batch statistics: another score
    assert (train_mode - scores).abs().max() > 1e-3


# --------------------------------------------------------------------------- ROC-AUC
def test_auc_of_a_perfect_a_reversed_a_constant_and_a_random_scorer():
    labels = np.r_[np.zeros(500), np.ones(500)]
    assert roc_auc(labels, labels) == 1.0  # every anomaly scored above every normal image
    assert roc_auc(-labels, labels) == 0.0  # the order exactly reversed
    assert roc_auc(np.ones(1000), labels) == 0.5  # all ties: no information
    random = np.random.default_rng(0).random(1000)
    assert abs(roc_auc(random, labels) - 0.5) < 0.05


def test_auc_is_the_probability_that_an_anomaly_outscores_a_normal_image():
    scores = torch.tensor([0.1, 0.4, 0.35, 0.8])
    labels = torch.tensor([0, 0, 1, 1])
    # pairs (anomaly, normal): (0.35, 0.1) yes, (0.35, 0.4) no, (0.8, 0.1) yes, (0.8, 0.4) yes => 3 of 4
    assert roc_auc(scores, labels) == 0.75
    assert roc_auc(-scores, labels) == pytest.approx(1 - 0.75)
    assert roc_auc(torch.tensor([0.1, 0.4, 0.4, 0.8]), labels) == 0.875  # (0.4, 0.4) tied: half a pair


def test_the_learners_auc_equals_scikit_learns_with_and_without_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    for scores in (rng.random(700), rng.integers(0, 6, 700).astype(float), rng.random(700).astype(np.float32)):
        labels = (rng.random(700) < 0.8).astype(np.int64)
        assert roc_auc(torch.from_numpy(scores), torch.from_numpy(labels)) == pytest.approx(
            roc_auc_score(labels, scores), abs=1e-7)  # sklearn sums trapezoids in float32 for float32 scores


def test_auc_refuses_a_single_class_and_mismatched_lengths():
    with pytest.raises(cu.CourseError, match="both normal"):
        ch07x.checked_roc_auc([0.1, 0.2, 0.3], [0, 0, 0])
    with pytest.raises(cu.CourseError, match="3 scores for 2 labels"):
        ch07x.checked_roc_auc([0.1, 0.2, 0.3], [0, 1])
    assert ch07x.checked_roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75


def test_the_bootstrap_auc_rows_match_scikit_learn_with_ties():
    from sklearn.metrics import roc_auc_score
    from course_utils.chapters._ch07_experiments import _auc_rows

    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, (5, 300)).astype(float)  # many ties
    labels = (rng.random((5, 300)) < 0.3).astype(np.int64)
    assert np.allclose(_auc_rows(scores, labels), [roc_auc_score(labels[i], scores[i]) for i in range(5)])


def test_a_paired_bootstrap_separates_a_real_difference_from_noise():
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(1800), np.ones(200)]
    same_a, same_b = rng.normal(size=2000) + labels, rng.normal(size=2000) + labels  # equally good scorers
    tie = ch07x.auc_difference(same_a, same_b, labels)
    assert tie["low"] < 0 < tie["high"] and tie["low"] <= tie["difference"] <= tie["high"]
    better = ch07x.auc_difference(same_a + labels, same_b, labels)  # a separates twice as far
    assert better["low"] > 0.05 and better["difference"] == pytest.approx(
        roc_auc(same_a + labels, labels) - roc_auc(same_b, labels))
    assert ch07x.auc_difference(same_a, same_b, labels, seed=3) != tie  # the seed draws other resamples
    with pytest.raises(cu.CourseError, match="same images"):
        ch07x.auc_difference(same_a, same_b[:10], labels)


# --------------------------------------------------------------------------- the threshold rule
def test_threshold_is_the_percentile_of_normal_errors_and_its_rates_are_counted_exactly():
    normal_val = np.arange(1, 101, dtype=float)  # 1..100
    assert threshold_at(normal_val, 95) == pytest.approx(np.percentile(normal_val, 95))
    assert threshold_at(normal_val) == threshold_at(normal_val, 95) == 95.05  # the chapter's default rule
    for q in (1, 37.5, 99):
        assert threshold_at(torch.from_numpy(normal_val ** 2), q) == pytest.approx(np.percentile(normal_val ** 2, q))
    assert ch07x.checked_threshold(normal_val) == threshold_at(normal_val, ch07x.THRESHOLD_PERCENTILE)
    errors = np.array([1.0, 2.0, 99.0, 50.0, 96.0, 97.0, 3.0])
    is_anomaly = np.array([0, 0, 0, 1, 1, 1, 1])
    rates = threshold_rates(95.05, errors, is_anomaly)
    assert rates == {"false_positive_rate": pytest.approx(1 / 3), "detection_rate": pytest.approx(2 / 4)}
    assert threshold_rates(96.0, errors, is_anomaly)["detection_rate"] == 0.25  # flagged: strictly above
    assert ch07x.checked_rates(95.05, errors, is_anomaly) == rates


def test_a_threshold_from_normal_validation_errors_flags_about_five_percent_of_new_normal_images():
    rng = np.random.default_rng(1)
    val_normal, test_normal = rng.lognormal(-4, 0.5, 4000), rng.lognormal(-4, 0.5, 4000)
    test_anomalies = rng.lognormal(-3, 0.5, 4000)
    threshold = threshold_at(val_normal, 95)
    rates = threshold_rates(threshold, np.r_[test_normal, test_anomalies], np.r_[np.zeros(4000), np.ones(4000)])
    assert abs(rates["false_positive_rate"] - 0.05) < 0.015
    assert rates["detection_rate"] > 0.5  # anomalies' errors are e times larger here


def test_threshold_rules_refuse_what_cannot_work():
    with pytest.raises(cu.CourseError, match="at least one normal image"):
        ch07x.checked_threshold([])
    with pytest.raises(cu.CourseError, match="between 0 and 100"):
        ch07x.checked_threshold([1.0, 2.0], 100)
    with pytest.raises(cu.CourseError, match="both normal and anomalous"):
        ch07x.checked_rates(0.5, [0.1, 0.9], [1, 1])


# --------------------------------------------------------------------------- one-class data
def _toy(n: int = 60, classes: int = 3) -> cu.ImageData:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return cu.ImageData(images, torch.arange(n) % classes, [f"c{i}" for i in range(classes)], "toy", "train")


def test_a_one_class_split_holds_exactly_the_normal_class():
    data = _toy()
    normal = ch07x.one_class(data, 1)
    assert set(normal.labels.tolist()) == {1}
    assert len(normal) == int((data.labels == 1).sum()) == 20
    assert torch.equal(normal.images, data.images[data.labels == 1])
    labels = ch07x.anomaly_labels(data, 1)
    assert labels.sum() == 40 and labels.tolist() == [int(y != 1) for y in data.labels.tolist()]


@needs_fashion
def test_one_class_on_real_fashion_mnist(fashion_test):
    sandals = ch07x.one_class(fashion_test, 5)
    assert len(sandals) == 1000 and sandals.classes[5] == "Sandal" and (sandals.labels == 5).all()
    assert ch07x.anomaly_labels(fashion_test, 5).sum() == 9000


def test_one_class_refuses_unknown_and_absent_classes():
    data = _toy()
    with pytest.raises(cu.CourseError, match="from 0 to 2"):
        ch07x.one_class(data, 3)
    missing = cu.ImageData(data.images[:5], torch.zeros(5, dtype=torch.int64), data.classes)
    with pytest.raises(cu.CourseError, match="no image of class 2"):
        ch07x.one_class(missing, 2)


def test_the_one_class_models_share_the_profiles_training_budget():
    for profile in cu.PROFILES.values():
        budget = ch07x.one_class_budget(profile)
        assert budget["epochs"] == profile.epochs
        if profile.train_images is None:
            assert budget["max_images"] is None  # whole splits: every image of the class
        else:
            assert 10 * budget["max_images"] <= profile.train_images < 10 * (budget["max_images"] + 1)
    assert ch07x.one_class_budget(cu.PROFILES["laptop"]) == {"epochs": 4, "max_images": 1200}


def test_the_profile_decides_how_many_cifar_classes_are_run():
    assert ch07x.cifar_classes(cu.PROFILES["smoke"]) == [0, 1]
    assert ch07x.cifar_classes(cu.PROFILES["laptop"]) == list(range(10))
    assert ch07x.cifar_classes(cu.PROFILES["gpu"]) == list(range(10))


# --------------------------------------------------------------------------- PCA scores
def test_pca_errors_vanish_inside_the_fitted_subspace_and_grow_outside_it():
    g = torch.Generator().manual_seed(0)
    basis = torch.rand(3, 64, generator=g)
    weights = torch.rand(200, 3, generator=g) / 3
    inside = cu.to_uint8((weights @ basis).clamp(0, 1).view(200, 1, 8, 8))
    data = cu.ImageData(inside, torch.zeros(200, dtype=torch.int64), ["inside"])
    pca = cu.fit_pca(data, 3)
    errors_inside = cu.pca_errors(pca, data)
    outside = torch.randint(0, 256, (50, 1, 8, 8), generator=g, dtype=torch.uint8)
    assert errors_inside.shape == (200,) and float(errors_inside.max()) < 2e-5  # only uint8 rounding is lost
    assert float(cu.pca_errors(pca, outside).min()) > 100 * float(errors_inside.max())


@needs_fashion
def test_pca_errors_average_to_pca_baselines_test_mse(fashion_train, fashion_test):
    train, test = fashion_train.subset(3000), fashion_test.subset(500)
    errors = cu.pca_errors(cu.fit_pca(train, 49), test)
    assert float(errors.mean()) == pytest.approx(cu.pca_baseline(train, test, 49)["mse"], rel=1e-4)


def test_pca_refuses_too_many_components_and_images_of_another_size():
    data = _toy(20)
    with pytest.raises(cu.CourseError, match="n_components"):
        cu.fit_pca(data, 21)
    pca = cu.fit_pca(data, 4)
    with pytest.raises(cu.CourseError, match="64 values"):
        cu.pca_errors(pca, torch.zeros(2, 1, 28, 28, dtype=torch.uint8))


# --------------------------------------------------------------------------- out-of-distribution inputs
def test_digits_are_sklearns_upscaled_to_the_image_size():
    from sklearn.datasets import load_digits

    digits = ch07x.digits_images(28)
    assert digits.shape == (1797, 1, 28, 28) and digits.dtype == torch.uint8
    assert int(digits.min()) == 0 and int(digits.max()) == 255
    original = torch.from_numpy(load_digits().images).float() / 16  # 0..1
    upscaled_mean = cu.to_float(digits).mean((1, 2, 3))
    assert torch.allclose(upscaled_mean, original.mean((1, 2)), atol=0.03)  # resizing keeps the ink
    assert ch07x.digits_images(32, channels=3).shape == (1797, 3, 32, 32)


@needs_fashion
def test_ood_inputs_shapes_and_ranges(fashion_test):
    ood = ch07x.ood_inputs(fashion_test, n=300)
    assert list(ood) == ["handwritten digits", "uniform noise", "all black", "inverted"]
    assert {k: tuple(v.shape) for k, v in ood.items()} == {
        "handwritten digits": (1797, 1, 28, 28), "uniform noise": (300, 1, 28, 28), "all black": (1, 1, 28, 28),
        "inverted": (300, 1, 28, 28)}
    assert all(v.dtype == torch.uint8 for v in ood.values())
    assert int(ood["all black"].max()) == 0
    noise = cu.to_float(ood["uniform noise"])
    assert abs(float(noise.mean()) - 0.5) < 0.01 and abs(float(noise.var()) - 1 / 12) < 0.005  # uniform on [0, 1]
    assert torch.equal(ood["inverted"], 255 - fashion_test.images[:300])
    assert torch.equal(ch07x.ood_inputs(fashion_test, n=300)["uniform noise"], ood["uniform noise"])  # seeded


def test_ood_table_scores_each_set_against_the_reference():
    errors = {"test": torch.tensor([0.1, 0.2, 0.3]), "far": torch.tensor([0.5, 0.6]), "same": torch.tensor([0.2])}
    table = ch07x.ood_table("test", errors, threshold=0.25)
    assert table.loc["far", "AUC against test"] == 1.0 and table.loc["same", "AUC against test"] == 0.5
    assert table.loc["test", "% above threshold"] == pytest.approx(100 / 3)
    assert table.loc["far", "images"] == 2 and table.loc["far", "median error"] == pytest.approx(0.55)
    with pytest.raises(cu.CourseError, match="reference set"):
        ch07x.ood_table("missing", errors, 0.25)


# --------------------------------------------------------------------------- one model per normal class
@needs_fashion
def test_a_one_class_run_scores_trousers_against_the_rest(fashion_train, fashion_test):
    train, val = cu.validation_split(fashion_train.subset(6000))
    test = fashion_test.subset(600)
    run = ch07x.train_one_class(train, val, test, 1, 49, epochs=2, max_images=400, progress=False)
    assert run.class_name == "Trouser" and run.train_images == 400
    assert run.val_errors["autoencoder"].shape == (int((val.labels == 1).sum()),)
    assert run.test_errors["PCA"].shape == (600,) and run.is_anomaly.sum() == int((test.labels != 1).sum())
    assert run.pca.n_components_ == 49
    # Trousers are the easiest Fashion-MNIST class to tell apart: PCA does it almost perfectly.
    assert run.auc("PCA") > 0.9
    assert run.auc("autoencoder") > 0.6
    rates = run.rates("PCA")
    assert rates["threshold"] == pytest.approx(np.percentile(run.val_errors["PCA"].numpy(), 95))
    assert 0 <= rates["false_positive_rate"] < 0.3 and rates["detection_rate"] > 0.5
    table = ch07x.auc_table({"Trouser": run}, extra={"constant AUC": {"Trouser": 0.5}, "seconds": {"Trouser": 1.0}})
    assert list(table.index) == ["Trouser", "mean"]
    assert list(table.columns) == ["autoencoder AUC", "PCA AUC", "constant AUC", "seconds"]
    assert table.loc["mean", "PCA AUC"] == pytest.approx(run.auc("PCA"))
    differences = ch07x.auc_differences({"Trouser": run}, n_boot=200)
    assert differences.loc["Trouser", "difference"] == pytest.approx(run.auc("autoencoder") - run.auc("PCA"))
    assert differences.loc["Trouser", "verdict"] in ("autoencoder better", "PCA better", "within noise")
    rates_frame = ch07x.rates_table({"Trouser": run}, "PCA")
    assert rates_frame.loc["Trouser", "detection_rate"] == rates["detection_rate"]
    fig = ch07x.plot_roc_curves({"Trouser": run})
    assert [ax.get_xlabel() for ax in fig.axes] == ["false-positive rate (normal images flagged)"] * 2
    assert "detection rate" in fig.axes[0].get_ylabel()
    plt.close(fig)
    fig = ch07x.plot_auc_table(table)
    assert fig.axes[0].get_ylabel() == "test ROC-AUC"
    assert len(fig.axes[0].patches) == 3  # one bar per AUC column; the mean row and other columns left out
    plt.close(fig)


# --------------------------------------------------------------------------- figures
def test_show_extremes_puts_the_lowest_errors_on_top_and_the_highest_below():
    data = _toy(30)
    errors = torch.arange(30, dtype=torch.float32) / 100
    fig = ch07x.show_extremes(data, errors, n=4)
    titles = [ax.get_title() for ax in fig.axes]
    assert [t.split("\n")[1] for t in titles] == ["0.0000", "0.0100", "0.0200", "0.0300",
                                                  "0.2900", "0.2800", "0.2700", "0.2600"]
    assert fig.axes[0].get_ylabel() == "lowest error" and fig.axes[4].get_ylabel() == "highest error"
    plt.close(fig)
    with pytest.raises(cu.CourseError, match="29 errors for 30 images"):
        ch07x.show_extremes(data, errors[:29])


def test_error_histograms_draw_single_images_as_lines_on_a_log_axis():
    errors = {"test": torch.rand(200) / 10 + 0.01, "noise": torch.rand(50) + 0.5, "black": torch.tensor([0.002])}
    fig = ch07x.plot_error_histograms(errors, "test", threshold=0.1)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and "reconstruction error" in ax.get_xlabel() and "share" in ax.get_ylabel()
    assert len(ax.lines) == 2  # the single black image and the threshold
    assert 0.002 < ax.lines[0].get_xdata()[0] <= float(errors["test"].min())  # below the range: at the left edge
    assert len(ax.patches) == 2  # one filled histogram per set of several images
    for patch in ax.patches:  # bars are shares of the set's images: none above 1, the tallest at least 1/bins
        assert 1 / 60 <= patch.get_path().vertices[:, 1].max() <= 1
    plt.close(fig)
    fig, axes = plt.subplots(1, 2)
    assert ch07x.plot_error_histograms(errors, "test", ax=axes[1]) is fig and axes[1].get_xscale() == "log"
    plt.close(fig)


# --------------------------------------------------------------------------- the stored notebook
def test_the_notebook_writes_the_score_the_auc_and_the_threshold_and_checks_them():
    import re

    nb = json.loads(NOTEBOOK.read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    saved = "\n".join(c for c in code if c.startswith("#@save"))
    for definition in ("def anomaly_scores(", "def roc_auc(", "def threshold_at(", "def threshold_rates("):
        assert definition in saved
    assert "model.eval()" in saved and "torch.no_grad()" in saved and "0.5 * tied" in saved
    assert "import course_utils" not in saved  # saved cells are plain PyTorch
    text = stored_outputs_text(nb)
    # the learner's ROC-AUC agrees with scikit-learn's on every stored run, and the score with the package's
    gaps = [float(g) for g in re.findall(r"largest difference ([0-9.e+-]+)", text)]
    assert len(gaps) == 2 and all(g < 1e-6 for g in gaps)
    # one progress bar per long step: each run of ten one-class models shows a single bar
    for cell in nb["cells"]:
        if "one_class_runs(" in "".join(cell["source"]) and cell["cell_type"] == "code":
            bars = [o for o in cell["outputs"] if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
            assert len(bars) == 1
    # the conclusions are printed from the measurements
    assert "autoencoder beats PCA in" in text and "of 10 Fashion-MNIST classes" in text
    assert "autoencoder AUC: lowest" in text and "multiple of the T-shirt/top's error" in text
    assert "median complexity (gradient energy)" in text
