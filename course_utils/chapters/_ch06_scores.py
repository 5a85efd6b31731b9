"""Chapter 06's hand-written plumbing: classical filters, scores per noise level, tables, figures, configurations.

The concepts (the corruptions, `corrupt`, the `Denoiser`, the denoising loop) are written in the
notebook and saved into the generated `ch06_denoising`; this module scores them. For scoring,
`corrupt` makes one fixed noisy copy of a split, so every method is judged on the same noisy pixels;
the filters' parameters are chosen on the validation split, the scores are on the test split.
(Its name avoids ``ch06_*``: `tools/save_cells.py` writes a chapter's saved cells into its one ``chNN_*.py``.)
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..data import ImageData, to_float
from ..errors import CourseError
from ..metrics import reconstruct
from ..models import recommended_autoencoder
from .ch06_denoising import GaussianNoise, corrupt

SIGMAS = (0.1, 0.2, 0.3, 0.5)  # noise levels on [0, 1] images, the chapter's x axis
TRAIN_SIGMAS = (0.05, 0.55)  # the blind denoiser draws each training image's sigma uniformly from this range
BLUR_SIGMAS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0)  # Gaussian blur widths (pixels) to choose from on validation
MEDIAN_SIZES = (3, 5)  # median filter windows (pixels) to choose from on validation


def reference_architecture(name: str, image_shape: Sequence[int]) -> nn.Module:
    """Return an untrained model shaped like reference ``name`` (its manifest row, else the recommended recipe)."""
    from .. import pretrained
    if name in pretrained.pretrained_names():
        return pretrained.build_reference(pretrained.pretrained_info(name))
    code_size = int(name.rsplit("-", 1)[1])  # "cifar10-256": the recommended model with a 256-value spatial code
    return recommended_autoencoder(image_shape, code_size, "spatial", base_width=64)


def corrupt_split(data: ImageData | torch.Tensor, corruption: Callable, seed: int = 0) -> torch.Tensor:
    """Return `corrupt` of a split's images (ImageData or a tensor): one fixed corrupted copy for ``seed``."""
    return corrupt(data.images if isinstance(data, ImageData) else data, corruption, seed=seed)


# --------------------------------------------------------------------------- classical filters
def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Return images blurred by a Gaussian of ``sigma`` pixels (kernel side 2 * ceil(3 sigma) + 1, reflect padding)."""
    from torchvision.transforms.functional import gaussian_blur as blur

    if sigma <= 0:
        raise CourseError(f"A Gaussian blur needs a positive width sigma (in pixels), got {sigma!r}.")
    side = min(images.shape[-2:])
    kernel = min(2 * math.ceil(3 * sigma) + 1, side - 1 if side % 2 == 0 else side)  # odd, at most the image
    return blur(to_float(images), [kernel, kernel], [float(sigma), float(sigma)])


def median_filter(images: torch.Tensor, size: int, batch_size: int = 256) -> torch.Tensor:
    """Return images with each value replaced by the median of its ``size`` x ``size`` window (reflect padding)."""
    if size < 1 or size % 2 == 0:
        raise CourseError(f"A median filter's window must be an odd whole number of pixels (3, 5, ...), got {size!r}.")
    x = to_float(images)
    pad = size // 2
    out = []
    for i in range(0, x.shape[0], batch_size):
        chunk = F.pad(x[i:i + batch_size], (pad, pad, pad, pad), mode="reflect")
        windows = chunk.unfold(2, size, 1).unfold(3, size, 1)  # N x C x H x W x size x size, a view: no copy yet
        out.append(windows.reshape(*windows.shape[:4], size * size).median(dim=-1).values)
    return torch.cat(out)


FILTERS: dict[str, tuple[Callable[[torch.Tensor, float], torch.Tensor], tuple]] = {
    "Gaussian blur": (gaussian_blur, BLUR_SIGMAS),
    "median filter": (median_filter, MEDIAN_SIZES),
}


# --------------------------------------------------------------------------- scores
@torch.no_grad()
def image_scores(restored: torch.Tensor, clean: ImageData | torch.Tensor, ssim: bool = True,
                 batch_size: int = 1000) -> dict[str, float]:
    """Return MSE, PSNR (of the mean MSE, as `evaluate` reports it) and SSIM of restored images against clean ones."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    target = clean.images if isinstance(clean, ImageData) else clean
    if tuple(restored.shape) != tuple(target.shape):
        raise CourseError(f"Restored images {tuple(restored.shape)} and clean images {tuple(target.shape)} "
                          "differ in shape: score each restored image against its own clean original.")
    psnr = PeakSignalNoiseRatio(data_range=1.0)
    ssim_metric = StructuralSimilarityIndexMeasure(data_range=1.0) if ssim else None
    sq_error, count = 0.0, 0
    for i in range(0, len(target), batch_size):
        y, t = to_float(restored[i:i + batch_size]).clamp(0, 1), to_float(target[i:i + batch_size])
        sq_error += float((y - t).pow(2).sum(dtype=torch.float64))
        count += t.numel()
        psnr.update(y, t)
        if ssim_metric is not None:
            ssim_metric.update(y, t)
    result = {"mse": sq_error / count, "psnr": float(psnr.compute())}
    if ssim_metric is not None:
        result["ssim"] = float(ssim_metric.compute())
    return result


def per_image_psnr(restored: torch.Tensor, clean: ImageData | torch.Tensor) -> torch.Tensor:
    """Return each image's PSNR in dB against its clean original."""
    target = to_float(clean.images if isinstance(clean, ImageData) else clean)
    mse = (to_float(restored).clamp(0, 1) - target).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1 / mse.clamp_min(1e-10))


def choose_filter_parameter(name: str, noisy_val: torch.Tensor, clean_val: ImageData | torch.Tensor,
                            params: Sequence[float] | None = None) -> tuple[float, dict[float, float]]:
    """Return the parameter of filter ``name`` with the best validation PSNR, and the PSNR of every candidate."""
    if name not in FILTERS:
        raise CourseError(f"Unknown filter {name!r}; choose one of {', '.join(FILTERS)}.")
    apply, default = FILTERS[name]
    scores = {p: image_scores(apply(noisy_val, p), clean_val, ssim=False)["psnr"] for p in (params or default)}
    return max(scores, key=scores.get), scores


def restoration_scores(test: ImageData, val: ImageData, models: Mapping[str, nn.Module],
                       corruptions: Mapping, filters: Sequence[str] = tuple(FILTERS), seed: int = 0,
                       keep: int = 0, progress: bool = True, table: Mapping | None = None, ssim: bool = True,
                       validation_images: int | None = 500) -> dict:
    """Score the corrupted input, each filter and each model under each corruption: ``table[key][method]``.

    ``corruptions`` maps a key (a noise level, a name) to a corruption. For each, the validation
    split gets its own corruption and each filter's parameter is the one with the best validation
    PSNR on ``validation_images`` of them (a fixed subset; None: all); the test split's corruption
    (fixed by ``seed``) is then shared by every method. Each entry holds ``psnr``, ``ssim`` (unless
    ``ssim=False``) and ``mse`` on the test split; a filter's also its ``parameter`` and the
    ``validation`` PSNR of every candidate. With ``keep=n`` each entry holds its first ``n``
    restored images (``images``). Pass an earlier result as ``table`` (same test split, seed and
    corruptions) to add models to it without scoring its entries again.
    """
    from tqdm.auto import tqdm

    val = val.subset(validation_images, seed=seed) if isinstance(val, ImageData) else val[:validation_images]
    result: dict = {}
    for key, corruption in tqdm(list(corruptions.items()), desc="corruptions", unit="level", disable=not progress):
        row: dict[str, dict] = dict(table[key]) if table is not None and key in table else {}
        noisy_test = corrupt_split(test, corruption, seed=seed)
        if "noisy input" not in row:
            row["noisy input"] = {**image_scores(noisy_test, test, ssim), "images": noisy_test[:keep]}
        todo = [name for name in filters if name not in row]
        noisy_val = corrupt_split(val, corruption, seed=seed + 1) if todo else None  # other noise than the test split's
        for name in todo:
            best, candidates = choose_filter_parameter(name, noisy_val, val)
            restored = FILTERS[name][0](noisy_test, best)
            row[name] = {**image_scores(restored, test, ssim), "parameter": best, "validation": candidates,
                         "images": restored[:keep]}
        for name, model in models.items():
            restored = reconstruct(model, noisy_test)
            row[name] = {**image_scores(restored, test, ssim), "images": restored[:keep]}
        if not keep:
            row = {name: {k: v for k, v in entry.items() if k != "images"} for name, entry in row.items()}
        result[key] = row
    return result


def denoising_scores(test: ImageData, val: ImageData, models: Mapping[str, nn.Module],
                     sigmas: Sequence[float] = SIGMAS, filters: Sequence[str] = tuple(FILTERS), seed: int = 0,
                     keep: int = 0, progress: bool = True, table: Mapping | None = None, ssim: bool = True,
                     validation_images: int | None = 500) -> dict[float, dict]:
    """Score the noisy input, each filter and each model at every Gaussian noise level: ``table[sigma][method]``.

    `restoration_scores` with ``GaussianNoise(sigma)`` for each sigma: filters tuned on ``val``,
    everything scored on the same noisy ``test`` images; ``table`` adds models to an earlier result.
    """
    return restoration_scores(test, val, models, {sigma: GaussianNoise(sigma) for sigma in sigmas}, filters,
                              seed, keep, progress, table, ssim, validation_images)


def denoising_frame(table: Mapping, metrics: str | Sequence[str] = ("psnr", "ssim")):
    """Return a `restoration_scores` table as a DataFrame: a row per noise level, a column per (metric, method)."""
    import pandas as pd
    single = isinstance(metrics, str)
    methods = list(next(iter(table.values())))
    columns = {(metric, m): {key: table[key][m][metric] for key in table}
               for metric in ([metrics] if single else metrics) for m in methods}
    frame = pd.DataFrame(columns).rename_axis("sigma" if all(isinstance(k, float) for k in table) else "corruption")
    if single:
        frame.columns = frame.columns.droplevel(0)
    return frame


def plot_filter_tuning(table: Mapping[float, Mapping[str, Mapping]], filters: Sequence[str] = tuple(FILTERS),
                       title: str | None = None):
    """Draw each filter's validation PSNR against its parameter, a line per noise level; return the Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(filters), figsize=(5.5 * len(filters), 3.6), squeeze=False)
    units = {"Gaussian blur": "blur width sigma (pixels)", "median filter": "window side (pixels)"}
    for ax, name in zip(axes[0], filters):
        for key, row in table.items():
            scores = row[name]["validation"]
            line, = ax.plot(list(scores), list(scores.values()), marker="o", label=f"noise sigma {key}")
            best = row[name]["parameter"]
            ax.plot([best], [scores[best]], marker="*", markersize=14, color=line.get_color())
        ax.set_xlabel(units.get(name, "parameter"))
        ax.set_ylabel("validation PSNR (dB)")
        ax.set_title(f"{name} (star: the chosen parameter)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def best_filter(row: Mapping[str, Mapping], filters: Sequence[str] = tuple(FILTERS)) -> str:
    """Return the name of the filter with the highest test PSNR in one row of a `denoising_scores` table."""
    return max(filters, key=lambda name: row[name]["psnr"])


def beats_best_filter(table: Mapping[float, Mapping[str, Mapping]], model: str,
                      filters: Sequence[str] = tuple(FILTERS)) -> dict[float, bool]:
    """Return, per sigma, whether ``model``'s test PSNR is above that of the best filter."""
    return {sigma: row[model]["psnr"] > row[best_filter(row, filters)]["psnr"] for sigma, row in table.items()}


def plot_psnr_vs_sigma(tables: Mapping[str, Mapping[float, Mapping[str, Mapping]]], metric: str = "psnr",
                       methods: Sequence[str] | None = None, title: str | None = None):
    """Draw test PSNR (or SSIM) against sigma, a panel per dataset and a line per method; return the Figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(5.5 * len(tables), 4), squeeze=False)
    styles = {"noisy input": dict(color="tab:gray", ls=":", marker="x")}
    for ax, (dataset, table) in zip(axes[0], tables.items()):
        sigmas = sorted(table)
        names = methods or list(table[sigmas[0]])
        for name in names:
            ax.plot(sigmas, [table[s][name][metric] for s in sigmas], label=name,
                    **{"marker": "o", **styles.get(name, {})})
        ax.set_xlabel("noise level sigma (on [0, 1] pixels)")
        ax.set_ylabel("test PSNR (dB)" if metric == "psnr" else f"test {metric.upper()}")
        ax.set_xticks(sigmas)
        ax.set_title(dataset)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def cross_sigma_table(models: Mapping[str, nn.Module], test: ImageData, sigmas: Sequence[float] = SIGMAS,
                      seed: int = 0):
    """Return test PSNR of each model (rows) on noise of each sigma (columns): does a denoiser generalise?"""
    import pandas as pd
    noisy = {sigma: corrupt_split(test, GaussianNoise(sigma), seed=seed) for sigma in sigmas}
    rows = {name: {sigma: image_scores(reconstruct(model, noisy[sigma]), test, ssim=False)["psnr"]
                   for sigma in sigmas} for name, model in models.items()}
    return pd.DataFrame(rows).T.rename_axis(columns="test sigma")


def show_worst_cases(clean: ImageData | torch.Tensor, noisy: torch.Tensor, restored: torch.Tensor, n: int = 8,
                     title: str | None = None):
    """Show the ``n`` images a denoiser restores worst (lowest PSNR): clean, noisy, restored rows; return the Figure."""
    target = clean.images if isinstance(clean, ImageData) else clean
    scores = per_image_psnr(restored, target)
    worst = scores.argsort()[:n]
    from ..plots import show_reconstructions
    fig = show_reconstructions(target[worst], {"noisy": noisy[worst], "denoised": restored[worst]}, n=n,
                               title=title)
    labels = ", ".join(f"{float(s):.1f}" for s in scores[worst])
    fig.axes[-1].set_xlabel(f"PSNR of each denoised image (dB), left to right: {labels}")
    return fig
