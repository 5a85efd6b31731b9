"""Chapter 07 (anomaly detection), the hand-written part: one-class splits and runs, tables, figures, OOD inputs.

The code the chapter teaches (``anomaly_scores``, ``roc_auc``, ``threshold_at``, ``threshold_rates``) is in
``ch07_anomaly_detection``, generated from the notebook's ``#@save`` cells; this module runs it: one model per
normal class (`one_class_runs`, beside PCA with as many components: ``course_utils.fit_pca``/``pca_errors``),
input checks that say how to fix a mistake (`checked_roc_auc`, `checked_threshold`, `checked_rates`), a paired
bootstrap of two methods' AUCs, tables, out-of-distribution inputs and the figures. Its name does not start with
``ch07_`` because ``tools/save_cells.py`` writes the chapter's saved cells into its one ``chNN_*.py`` module.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..data import ImageData, resize_images, to_float
from ..environment import Profile
from ..errors import CourseError
from ..metrics import fit_pca, pca_errors
from ..models import RECOMMENDED_TRAINING, recommended_autoencoder
from ..training import fit
from .ch07_anomaly_detection import anomaly_scores, roc_auc, threshold_at, threshold_rates

FASHION_CODE = 196  # the course's Fashion-MNIST code size (kapilsh's 4x7x7 code; the reference "fashion-mnist-196")
CIFAR_CODE = 256  # the course's CIFAR-10 code size (the reference "cifar10-256")
THRESHOLD_PERCENTILE = 95.0  # flag an image when its error is above 95% of the normal validation images' errors


# --------------------------------------------------------------------------- one-class data
def one_class(data: ImageData, normal_class: int) -> ImageData:
    """Return only the images of ``normal_class``: the "normal" data a one-class model trains on."""
    if not 0 <= int(normal_class) < len(data.classes):
        raise CourseError(f"normal_class must be a class index from 0 to {len(data.classes) - 1} "
                          f"({', '.join(data.classes)}), got {normal_class}.")
    keep = (data.labels == int(normal_class)).nonzero().flatten()
    if len(keep) == 0:
        raise CourseError(f"{data!r} holds no image of class {normal_class} ({data.classes[int(normal_class)]}): "
                          "load a larger share of the split (another profile) or pick another class.")
    return ImageData(data.images[keep], data.labels[keep], data.classes, data.name,
                     f"{data.split or '?'}/{data.classes[int(normal_class)]} only")


def anomaly_labels(data: ImageData, normal_class: int) -> np.ndarray:
    """Return 1 for every image that is not of ``normal_class`` (an anomaly) and 0 for the normal ones."""
    return (data.labels != int(normal_class)).numpy().astype(np.int64)


def one_class_budget(profile: Profile, classes: int = 10) -> dict:
    """Return `train_one_class`'s budget: ``profile.epochs`` epochs on a ``classes``-th of the training images.

    The one-class models of a dataset share the profile's training budget: each trains on at most
    ``profile.train_images // classes`` images of its class (all of them when the profile uses whole splits).
    """
    share = None if profile.train_images is None else max(1, profile.train_images // classes)
    return {"epochs": profile.epochs, "max_images": share}


def cifar_classes(profile: Profile) -> list[int]:
    """Return the CIFAR-10 classes this profile makes normal in turn: the first ``profile.one_class_cifar_classes``.

    The laptop and gpu profiles run all ten; the smoke profile, which must finish in seconds, runs two.
    """
    return list(range(profile.one_class_cifar_classes))


# --------------------------------------------------------------------------- the learner's functions, checked
def _as_numpy(values) -> np.ndarray:
    return values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)


def checked_roc_auc(scores, is_anomaly) -> float:
    """Return the chapter's `roc_auc` of scores against 0/1 labels, after checking they can give one."""
    scores, is_anomaly = _as_numpy(scores).ravel(), _as_numpy(is_anomaly).ravel()
    if scores.shape != is_anomaly.shape:
        raise CourseError(f"Got {scores.size} scores for {is_anomaly.size} labels: score every image once.")
    if len(np.unique(is_anomaly)) != 2:
        raise CourseError("ROC-AUC needs both normal (0) and anomalous (1) images among the labels, got only "
                          f"{np.unique(is_anomaly).tolist()}: score a split that holds other classes too.")
    return roc_auc(torch.from_numpy(scores.astype(np.float64)), torch.from_numpy(is_anomaly.astype(np.int64)))


def checked_threshold(normal_errors, percentile: float = THRESHOLD_PERCENTILE) -> float:
    """Return the chapter's `threshold_at` of normal (validation) errors, after checking it can give one."""
    errors = _as_numpy(normal_errors).ravel()
    if errors.size == 0:
        raise CourseError("A threshold needs the errors of at least one normal image (a validation split).")
    if not 0 < percentile < 100:
        raise CourseError(f"percentile must lie between 0 and 100, got {percentile}.")
    return threshold_at(torch.from_numpy(errors.astype(np.float64)), percentile)


def checked_rates(threshold: float, errors, is_anomaly) -> dict[str, float]:
    """Return the chapter's `threshold_rates`, after checking there is one error per image and both kinds."""
    errors, is_anomaly = _as_numpy(errors).ravel(), _as_numpy(is_anomaly).ravel().astype(bool)
    if errors.shape != is_anomaly.shape or is_anomaly.all() or not is_anomaly.any():
        raise CourseError("threshold_rates needs one error per image and both normal and anomalous images.")
    return threshold_rates(threshold, torch.from_numpy(errors), torch.from_numpy(is_anomaly))


# --------------------------------------------------------------------------- is a difference real?
def _auc_rows(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Return the ROC-AUC of each row of scores against the same row of 0/1 labels (ranks, ties averaged)."""
    from scipy.stats import rankdata

    ranks = rankdata(scores, axis=1)
    positives = labels.sum(1)
    negatives = labels.shape[1] - positives
    return (np.where(labels == 1, ranks, 0.0).sum(1) - positives * (positives + 1) / 2) / (positives * negatives)


def auc_difference(scores_a, scores_b, is_anomaly, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """Return ROC-AUC(a) - ROC-AUC(b) on the same images, with a 95% paired bootstrap interval.

    Each of ``n_boot`` resamples draws the images with replacement and scores both methods on the
    same draw; the interval is the 2.5th to 97.5th percentile of the differences. When it excludes
    0, the difference is larger than what re-drawing this many test images would explain.
    """
    a, b = _as_numpy(scores_a).ravel(), _as_numpy(scores_b).ravel()
    labels = _as_numpy(is_anomaly).ravel().astype(np.int64)
    if a.shape != b.shape:
        raise CourseError(f"Got {a.size} and {b.size} scores: score the same images with both methods.")
    difference = checked_roc_auc(a, labels) - checked_roc_auc(b, labels)  # also checks lengths and both kinds
    idx = np.random.default_rng(seed).integers(0, labels.size, (n_boot, labels.size))
    draws = labels[idx]
    keep = (draws.min(1) == 0) & (draws.max(1) == 1)  # a draw needs both kinds of image
    idx, draws = idx[keep], draws[keep]
    diffs = _auc_rows(a[idx], draws) - _auc_rows(b[idx], draws)
    low, high = np.percentile(diffs, [2.5, 97.5])
    return {"difference": float(difference), "low": float(low), "high": float(high)}


def auc_differences(runs: Mapping[str, "OneClassRun"], a: str = "autoencoder", b: str = "PCA",
                    n_boot: int = 1000):
    """Return, per normal class, `auc_difference` of two methods' test scores and whether it is clear of zero."""
    import pandas as pd

    rows = {name: auc_difference(run.test_errors[a], run.test_errors[b], run.is_anomaly, n_boot)
            for name, run in runs.items()}
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("normal class")
    frame["verdict"] = np.where(frame["low"] > 0, f"{a} better", np.where(frame["high"] < 0, f"{b} better",
                                                                           "within noise"))
    return frame


# --------------------------------------------------------------------------- one model per normal class
@dataclasses.dataclass
class OneClassRun:
    """One normal class: its autoencoder, its PCA, and both methods' errors on the validation and test images."""

    normal_class: int
    class_name: str
    model: nn.Module
    pca: object
    train_images: int  # normal training images the autoencoder and PCA saw
    seconds: float  # the autoencoder's training time
    val_errors: dict[str, torch.Tensor]  # method -> errors of the normal validation images
    test_errors: dict[str, torch.Tensor]  # method -> errors of every test image
    is_anomaly: np.ndarray  # per test image: 1 = not the normal class

    def auc(self, method: str) -> float:
        """Return the test ROC-AUC of one method ("autoencoder" or "PCA")."""
        return checked_roc_auc(self.test_errors[method], self.is_anomaly)

    def rates(self, method: str, percentile: float = THRESHOLD_PERCENTILE) -> dict[str, float]:
        """Return the threshold (from normal validation errors) and its test false-positive and detection rates."""
        threshold = checked_threshold(self.val_errors[method], percentile)
        return {"threshold": threshold, **checked_rates(threshold, self.test_errors[method], self.is_anomaly)}


def train_one_class(train: ImageData, val: ImageData, test: ImageData, normal_class: int, code_size: int, *,
                    epochs: int, max_images: int | None = None, bottleneck: str = "flat",
                    device: torch.device | None = None, progress: bool = True, seed: int = 0) -> OneClassRun:
    """Train the recommended autoencoder and fit PCA on one class's images; score validation and test images.

    Both see the same ``max_images`` (all when None) training images of ``normal_class``; the
    autoencoder trains with `RECOMMENDED_TRAINING` for ``epochs`` and is scored by the chapter's
    `anomaly_scores`, PCA keeps ``code_size`` components and is scored by ``pca_errors``.
    """
    normal, val_normal = one_class(train, normal_class).subset(max_images, seed=seed), one_class(val, normal_class)
    torch.manual_seed(seed)
    model = recommended_autoencoder(train.image_shape, code_size, bottleneck)
    training = dict(RECOMMENDED_TRAINING)
    training["batch_size"] = min(training["batch_size"], len(normal))
    name = train.classes[normal_class]
    start = time.perf_counter()
    fit(model, normal, epochs=epochs, device=device, progress=progress, seed=seed, desc=f"normal = {name}",
        **training)
    seconds = time.perf_counter() - start
    pca = fit_pca(normal, min(code_size, len(normal)), seed=seed)
    val_errors = {"autoencoder": anomaly_scores(model, val_normal.images), "PCA": pca_errors(pca, val_normal)}
    test_errors = {"autoencoder": anomaly_scores(model, test.images), "PCA": pca_errors(pca, test)}
    return OneClassRun(normal_class, name, model, pca, len(normal), seconds, val_errors, test_errors,
                       anomaly_labels(test, normal_class))


def one_class_runs(train: ImageData, val: ImageData, test: ImageData, classes: Sequence[int], code_size: int, *,
                   epochs: int, max_images: int | None = None, bottleneck: str = "flat",
                   device: torch.device | None = None, progress: bool = True) -> dict[str, OneClassRun]:
    """Run `train_one_class` for each class in turn (same recipe, budget and seed), under one progress bar."""
    from tqdm.auto import tqdm

    runs = {}
    with tqdm(total=len(classes), desc=f"{train.name}: one model per normal class", unit="model",
              disable=not progress) as bar:
        for c in classes:
            run = train_one_class(train, val, test, c, code_size, epochs=epochs, max_images=max_images,
                                  bottleneck=bottleneck, device=device, progress=False)
            runs[run.class_name] = run
            bar.set_postfix(last=run.class_name, refresh=False)
            bar.update()
    return runs


def auc_table(runs: Mapping[str, OneClassRun], extra: Mapping[str, Mapping[str, float]] | None = None):
    """Return a DataFrame of test ROC-AUCs per normal class (autoencoder, PCA, extra scorers) with a mean row."""
    import pandas as pd

    rows = {name: {"autoencoder AUC": run.auc("autoencoder"), "PCA AUC": run.auc("PCA")} for name, run in runs.items()}
    for column, values in (extra or {}).items():
        for name in rows:
            rows[name][column] = values[name]
    frame = pd.DataFrame.from_dict(rows, orient="index").rename_axis("normal class")
    frame.loc["mean"] = frame.mean()
    return frame


def rates_table(runs: Mapping[str, OneClassRun], method: str = "autoencoder",
                percentile: float = THRESHOLD_PERCENTILE):
    """Return a DataFrame of each class's threshold and its test false-positive and detection rates, with a mean row."""
    import pandas as pd

    frame = pd.DataFrame.from_dict({name: run.rates(method, percentile) for name, run in runs.items()},
                                   orient="index").rename_axis("normal class")
    frame.loc["mean"] = frame.mean()
    return frame


# --------------------------------------------------------------------------- out-of-distribution inputs
def digits_images(size: int = 28, channels: int = 1) -> torch.Tensor:
    """Return scikit-learn's 1,797 handwritten 8x8 digits upscaled to ``size`` x ``size``, as uint8 (N, C, H, W)."""
    from sklearn.datasets import load_digits

    digits = torch.from_numpy(load_digits().images)  # 1797 x 8 x 8, ink 0..16 (bright on dark, like Fashion-MNIST)
    images = (digits * (255.0 / 16.0)).round().to(torch.uint8).unsqueeze(1)  # 8x8, 0..255
    return resize_images(images, size).repeat(1, channels, 1, 1)  # 8x8 => size x size


def ood_inputs(test: ImageData, n: int = 500, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return out-of-distribution inputs shaped like ``test``'s images: digits, uniform noise, all-black, inverted.

    Every set is uint8 (N, C, H, W): scikit-learn's digits (all of them), ``n`` images of uniform noise,
    one all-black image, and the first ``n`` test images inverted (255 - x).
    """
    channels, height, width = test.image_shape
    if height != width:
        raise CourseError(f"ood_inputs builds square images, the test images are {height}x{width}.")
    g = torch.Generator().manual_seed(seed)
    return {
        "handwritten digits": digits_images(height, channels),
        "uniform noise": torch.randint(0, 256, (n, channels, height, width), generator=g, dtype=torch.uint8),
        "all black": torch.zeros(1, channels, height, width, dtype=torch.uint8),
        "inverted": 255 - test.images[:n],
    }


def ood_table(reference: str, errors: Mapping[str, torch.Tensor], threshold: float):
    """Return, per image set, its size, median error, ROC-AUC against ``reference`` and share above ``threshold``.

    ``errors`` maps each set's name to its per-image errors and holds ``reference`` (the in-distribution
    test images); the AUC of a set says how well the error separates it from the reference (0.5 = not at all).
    """
    import pandas as pd

    if reference not in errors:
        raise CourseError(f"errors must hold the reference set {reference!r}, got {list(errors)}.")
    base = _as_numpy(errors[reference]).ravel()
    rows = {}
    for name, e in errors.items():
        e = _as_numpy(e).ravel()
        auc = float("nan") if name == reference else checked_roc_auc(np.concatenate([base, e]),
                                                                      np.r_[np.zeros(base.size), np.ones(e.size)])
        rows[name] = {"images": e.size, "median error": float(np.median(e)), f"AUC against {reference}": auc,
                      "% above threshold": 100.0 * float((e > threshold).mean())}
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("image set")


# --------------------------------------------------------------------------- figures
def plot_roc_curves(runs: Mapping[str, OneClassRun], methods: Sequence[str] = ("autoencoder", "PCA"),
                    title: str | None = None):
    """Draw each run's test ROC curve, one panel per method, with the AUC in the legend; return the Figure."""
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    fig, axes = plt.subplots(1, len(methods), figsize=(5.2 * len(methods), 4.6), squeeze=False, sharey=True)
    colors = plt.cm.tab10(np.linspace(0, 1, 10))
    for ax, method in zip(axes[0], methods):
        for color, (name, run) in zip(colors, runs.items()):
            fpr, tpr, _ = roc_curve(run.is_anomaly, _as_numpy(run.test_errors[method]))
            ax.plot(fpr, tpr, color=color, lw=1.2, label=f"{name} ({run.auc(method):.3f})")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=0.8, label="chance (0.5)")
        ax.set_xlabel("false-positive rate (normal images flagged)")
        ax.set_title(f"{method}")
        ax.legend(title="normal class (AUC)", fontsize=7, loc="lower right")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("detection rate (anomalies flagged)")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_auc_table(table, title: str | None = None):
    """Draw a table from `auc_table` as grouped bars per normal class, with the chance level; return the Figure.

    The legend sits outside the axes, to the right, so that it covers no bar.
    """
    import matplotlib.pyplot as plt

    body = table.drop(index="mean", errors="ignore")
    columns = [c for c in body.columns if c.endswith("AUC")]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(body) * len(columns) / 2 + 2) + 2.2, 3.8))
    width = 0.8 / len(columns)
    x = np.arange(len(body))
    for i, column in enumerate(columns):
        ax.bar(x + (i - (len(columns) - 1) / 2) * width, body[column], width, label=column)
    ax.axhline(0.5, color="grey", ls="--", lw=0.8, label="chance")
    ax.set_xticks(x, body.index, rotation=20)
    ax.set_xlabel("normal class (the one class the model was trained on)")
    ax.set_ylabel("test ROC-AUC")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title or "One-class anomaly detection: ROC-AUC per normal class")
    fig.tight_layout()
    return fig


def plot_error_histograms(errors: Mapping[str, torch.Tensor], reference: str, threshold: float | None = None,
                          bins: int = 60, title: str | None = None, ax=None):
    """Draw reconstruction-error histograms of several image sets on one log axis; return the Figure.

    Each set's bars add up to 1 (the share of its images in each bin), so sets of different sizes
    compare directly. ``reference`` names the in-distribution set; a set of a single image is drawn
    as a vertical line (at the axis' left edge when its error is below the other sets' range).
    """
    import matplotlib.pyplot as plt

    values = {name: _as_numpy(e).ravel().astype(np.float64) for name, e in errors.items()}
    spread = [v for v in values.values() if v.size > 1] or list(values.values())
    low = max(min(v.min() for v in spread), 1e-8)
    high = max(v.max() for v in values.values())
    edges = np.geomspace(low * 0.9, high * 1.1, bins)
    if ax is None:
        _, ax = plt.subplots(figsize=(9, 4))
    colors = iter(plt.cm.tab10(np.arange(10)))
    for name, v in values.items():
        color = next(colors)
        if v.size == 1:
            ax.axvline(max(v[0], edges[0]), color=color, lw=2, label=f"{name} (1 image): {v[0]:.2g}")
        else:
            ax.hist(v, bins=edges, weights=np.full(v.size, 1.0 / v.size), alpha=0.7 if name == reference else 0.5,
                    color=color, label=f"{name} ({v.size:,} images)", histtype="stepfilled")
    if threshold is not None:
        ax.axvline(threshold, color="black", ls="--", lw=1, label=f"threshold {threshold:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("reconstruction error (per-image MSE on [0, 1], log scale)")
    ax.set_ylabel("share of the set's images per bin")
    ax.legend(fontsize=8)
    ax.set_title(title or f"Reconstruction errors: {reference} against out-of-distribution inputs")
    ax.figure.tight_layout()
    return ax.figure


def show_extremes(data: ImageData, errors, n: int = 8, title: str | None = None):
    """Show the ``n`` lowest- and ``n`` highest-error images of a split, each titled with its class and error."""
    import matplotlib.pyplot as plt

    errors = _as_numpy(errors).ravel()
    if errors.size != len(data):
        raise CourseError(f"Got {errors.size} errors for {len(data)} images: score every image once.")
    order = np.argsort(errors, kind="stable")
    rows = {"lowest error": order[:n], "highest error": order[::-1][:n]}
    fig, axes = plt.subplots(2, n, figsize=(1.35 * n, 3.6), squeeze=False)
    for r, (label, idx) in enumerate(rows.items()):
        for ax, i in zip(axes[r], idx):
            image = to_float(data.images[int(i)]).permute(1, 2, 0).squeeze(-1).numpy()
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{data.classes[int(data.labels[int(i)])]}\n{errors[int(i)]:.4f}", fontsize=7)
        axes[r, 0].set_ylabel(label, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
