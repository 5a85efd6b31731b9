"""Chapter 08's hand-written plumbing: the chapter's models, features, 2-D maps, the linear probe, figures.

The chapter's concept code (encoding a split, nearest neighbours and precision@k, interpolation,
decoding, random codes) is written in the notebook and saved into ``ch08_latent_space`` (generated);
the helpers here build on it. Its name does not start with ``ch08_`` because ``tools/save_cells.py``
writes a chapter's saved cells into its one ``chNN_*.py`` module.
"""
from __future__ import annotations

import os

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..data import ImageData, to_float
from ..environment import Profile
from ..errors import CourseError
from ..metrics import fit_pca
from ..models import RECOMMENDED_TRAINING, recommended_autoencoder
from ..plots import show_rows  # noqa: F401 (the figures of rows the notebook draws: the core's)
from .ch08_latent_space import decode_codes, encode_images, interpolate, nearest_neighbours

# The chapter's reference model per dataset, and the code size of the autoencoder trained when it is missing.
REFERENCES = {"fashion-mnist": "fashion-mnist-196", "cifar10": "cifar10-256"}
CODE_SIZES = {"fashion-mnist": 196, "cifar10": 256}
# Inverse regularisation strengths C of the logistic-regression probe, chosen on the validation split.
PROBE_C = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
TSNE_POINTS = 2_000  # t-SNE maps at most this many test images (its cost grows faster than linearly)


MANY_CORES = 8  # from this many cores on, the parallel loops pay for themselves


def one_thread():
    """Return a context in which scikit-learn's OpenMP and BLAS loops run on one thread (below MANY_CORES cores).

    t-SNE and the probes' small solver steps run many short parallel loops; on a 2-core machine that
    is busy with anything else the threads wait for each other, and one thread is many times faster
    (t-SNE of 80 points: seconds instead of minutes on this course's CI machine). A machine with many
    cores (a GPU server) keeps its threads.
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1 if (os.cpu_count() or 1) < MANY_CORES else None)


# --------------------------------------------------------------------------- the chapter's models
def chapter_model(dataset: str, train: ImageData | None, profile: Profile, device: torch.device | str | None = None,
                  seed: int = 0) -> tuple[nn.Module, str]:
    """Return the chapter's autoencoder for ``dataset`` and what happened (also printed): loaded, or trained here.

    The converged reference model ``REFERENCES[dataset]`` when it is installed (`cu.load_or_train`);
    otherwise the recommended autoencoder with a spatial code of ``CODE_SIZES[dataset]`` values,
    trained on ``train`` for ``profile.epochs`` epochs with ``RECOMMENDED_TRAINING``.
    """
    from ..pretrained import load_or_train
    from ..training import fit

    if dataset not in REFERENCES:
        raise CourseError(f"Chapter 08 has models for {', '.join(REFERENCES)}; got {dataset!r}.")

    def train_here() -> nn.Module:
        if train is None:
            raise CourseError(f"The reference model {REFERENCES[dataset]!r} is not installed, so chapter_model "
                              "needs training images: pass the training split as `train`.")
        torch.manual_seed(seed)
        model = recommended_autoencoder(train.image_shape, CODE_SIZES[dataset], "spatial")
        start = time.perf_counter()
        fit(model, train, epochs=profile.epochs, device=device, seed=seed, desc=f"{dataset} autoencoder",
            **RECOMMENDED_TRAINING)
        print(f"{dataset}: trained recommended_autoencoder({train.image_shape}, {CODE_SIZES[dataset]}, 'spatial') "
              f"for {profile.epochs} epoch(s) on {len(train):,} images in {time.perf_counter() - start:.0f} s")
        return model

    model, what = load_or_train(REFERENCES[dataset], train_here, device)
    return model.eval(), what


def tsne_points(profile: Profile) -> int:
    """Return how many test images the t-SNE map shows in this profile (its test share, at most TSNE_POINTS)."""
    return min(profile.take(10_000, "test"), TSNE_POINTS)


# --------------------------------------------------------------------------- features
def flat_pixels(data: ImageData | torch.Tensor) -> np.ndarray:
    """Return images as a float32 array of flattened pixels on [0, 1], one row per image."""
    images = data.images if isinstance(data, ImageData) else data
    return to_float(images).flatten(1).numpy()


def probe_features(model: nn.Module, train: ImageData, val: ImageData, test: ImageData,
                   seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Return (train, validation, test) features for 'codes' (by `encode_images`), 'PCA' (as many values), 'pixels'."""
    codes = tuple(encode_images(model, split.images).numpy() for split in (train, val, test))
    pixels = tuple(flat_pixels(split) for split in (train, val, test))
    pca = fit_pca(train, codes[0].shape[1], seed=seed)  # fit on the training images only
    return {"codes": codes, "PCA": tuple(pca.transform(x).astype(np.float32) for x in pixels), "pixels": pixels}


def embed_2d(features: np.ndarray, method: str = "pca", seed: int = 0) -> np.ndarray:
    """Return a 2-D map of ``features`` (one row per image) by 'pca' or 'tsne' (after PCA to 50 dimensions)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit_transform(features)
    if method != "tsne":
        raise CourseError(f"method must be 'pca' or 'tsne', got {method!r}.")
    if len(features) < 10:
        raise CourseError(f"t-SNE needs at least 10 points to map, got {len(features)}.")
    reduced = PCA(n_components=min(50, *features.shape), random_state=seed).fit_transform(features)
    perplexity = min(30.0, (len(features) - 1) / 3)  # t-SNE needs perplexity < number of points
    with one_thread():
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(reduced)


# --------------------------------------------------------------------------- retrieval
def retrieval_rows(features: Mapping[str, np.ndarray], data: ImageData, query: int, k: int = 8
                   ) -> dict[str, torch.Tensor]:
    """Return, per kind of feature, the query image then its ``k`` nearest images in ``data``, named with the hit count.

    ``features`` maps a kind ('codes', 'pixels', ...) to one row per image of ``data``; a row's name
    says how many of the ``k`` share the query's class, e.g. 'codes: 6/8 Sneaker'. The neighbours
    come from the chapter's `nearest_neighbours`.
    """
    if not 0 < k < len(data):
        raise CourseError(f"k must be between 1 and the number of images less one ({len(data) - 1}), got {k}.")
    rows = {}
    for kind, rows_of_kind in features.items():
        if len(rows_of_kind) != len(data):
            raise CourseError(f"The {kind!r} features have {len(rows_of_kind)} rows for {len(data)} images.")
        found = nearest_neighbours(rows_of_kind, [query], k)[0]
        same = int((data.labels[found] == data.labels[query]).sum())
        rows[f"{kind}: {same}/{k} {data.classes[int(data.labels[query])]}"] = torch.cat(
            [data.images[query:query + 1], data.images[found]])
    return rows


# --------------------------------------------------------------------------- the linear probe
def linear_probe(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                 test: tuple[np.ndarray, np.ndarray], cs: Sequence[float] = PROBE_C,
                 max_iter: int = 500, patience: int = 2) -> dict[str, float]:
    """Fit logistic regression on standardised ``train`` features for each C, keep the best on ``val``, score ``test``.

    Each split is (features, labels). The values of C are tried from the strongest regularisation
    (smallest C) up, each fit starting from the previous one's weights (a regularisation path),
    and the path stops once ``patience`` values in a row score below the best on validation (the
    weakly regularised fits are the slow ones). Returns the chosen C, how many values were tried,
    the validation and test accuracy, the number of features, and whether the chosen fit converged
    within ``max_iter``.
    """
    import copy
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    if not cs:
        raise CourseError("linear_probe needs at least one value of C to try.")
    scaler = StandardScaler().fit(train[0])  # zero mean, unit variance on the training rows
    x_train, x_val = scaler.transform(train[0]), scaler.transform(val[0])
    probe = LogisticRegression(max_iter=max_iter, warm_start=True)
    best, best_val, best_c, tried = None, -1.0, None, 0
    for c in sorted(cs):
        tried += 1
        with warnings.catch_warnings(), one_thread():  # a probe stopped at max_iter is reported as not converged
            warnings.simplefilter("ignore", ConvergenceWarning)
            probe.set_params(C=c).fit(x_train, train[1])
            score = probe.score(x_val, val[1])
        if score > best_val:
            best, best_val, best_c, worse = copy.deepcopy(probe), score, c, 0
        else:
            worse += 1
            if worse >= patience:
                break
    with one_thread():
        accuracy = float(best.score(scaler.transform(test[0]), test[1]))
    return {"C": best_c, "C values tried": tried, "val accuracy": best_val, "test accuracy": accuracy,
            "features": int(np.asarray(train[0]).shape[1]), "converged": int(np.max(best.n_iter_)) < max_iter}


# --------------------------------------------------------------------------- interpolation and random codes
def crossfade_departure(frames: torch.Tensor) -> float:
    """Return how far a strip's middle frames lie from a cross-fade of its two ends, relative to the ends' distance.

    The root-mean-square difference between the middle frames and the pixel blends of the first and
    last frame, divided by the root-mean-square difference between those two ends: 0 for a strip
    that is exactly a cross-fade (a pixel-space strip), larger where the frames change shape instead.
    """
    if len(frames) < 3:
        raise CourseError(f"A strip needs at least 3 frames (two ends and a middle one), got {len(frames)}.")
    frames = frames.float()
    fade = interpolate(frames[0], frames[-1], len(frames))
    ends = (frames[-1] - frames[0]).pow(2).mean().sqrt()
    if ends == 0:
        raise CourseError("The strip's two ends are the same image, so it has no cross-fade to compare with.")
    return float((frames[1:-1] - fade[1:-1]).pow(2).mean().sqrt() / ends)


def round_trip_change(model: nn.Module, codes: torch.Tensor, code_shape: Sequence[int]) -> torch.Tensor:
    """Return, per code, how much decoding then encoding again moves it: ||encode(decode(z)) - z|| / ||z||.

    Codes of real images come back almost unchanged; a code where the decoder was never trained
    decodes to an image the encoder does not map back to it. Uses the chapter's `decode_codes` and
    `encode_images`.
    """
    codes = codes.float()
    again = encode_images(model, decode_codes(model, codes, tuple(code_shape)))
    return (again - codes).norm(dim=1) / codes.norm(dim=1).clamp(min=1e-12)


# --------------------------------------------------------------------------- inputs unlike the training data
def odd_images(size: int = 32, channels: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    """Return UvA tutorial 9's out-of-distribution inputs as uint8 (C, H, W) images.

    Uniform noise, one colour channel switched fully on over mid-grey, a black-and-white
    checkerboard (squares of a quarter of the side) and a colour gradient (red grows to the
    right, green downwards; for grey images a diagonal ramp).
    """
    if size < 4:
        raise CourseError(f"The odd images need a side of at least 4 pixels, got {size}.")
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(channels, size, size, generator=generator)
    single = torch.full((channels, size, size), 0.5)
    single[0] = 1.0  # red on an RGB image, white on a grey one
    square = size // 4
    rows = torch.arange(size).view(-1, 1) // square
    cols = torch.arange(size).view(1, -1) // square
    board = ((rows + cols) % 2).float().expand(channels, size, size)
    ramp = torch.linspace(0, 1, size)
    gradient = torch.full((channels, size, size), 0.5)
    across, down = ramp.view(1, -1).expand(size, size), ramp.view(-1, 1).expand(size, size)
    if channels == 1:
        gradient[0] = (across + down) / 2  # dark top left to bright bottom right
    else:
        gradient[0], gradient[1] = across, down  # red grows to the right, green downwards
    images = {"uniform noise": noise, "one colour channel": single, "checkerboard": board,
              "colour gradient": gradient}
    return {name: (x * 255).round().to(torch.uint8) for name, x in images.items()}


def nearest_code_distances(codes: torch.Tensor, reference: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Return each code's Euclidean distance to its nearest row of ``reference`` (e.g. the training codes)."""
    codes, reference = torch.as_tensor(codes).float(), torch.as_tensor(reference).float()
    if codes.ndim != 2 or reference.ndim != 2 or codes.shape[1] != reference.shape[1]:
        raise CourseError(f"Need two sets of codes of the same length, got shapes {tuple(codes.shape)} and "
                          f"{tuple(reference.shape)}.")
    return torch.cat([torch.cdist(codes[i:i + batch_size], reference).min(dim=1).values
                      for i in range(0, len(codes), batch_size)])


# --------------------------------------------------------------------------- figures
def plot_2d_maps(maps: Mapping[str, np.ndarray], labels: np.ndarray | torch.Tensor, classes: Sequence[str],
                 title: str | None = None):
    """Scatter each named 2-D map (points, 2) in its own panel, coloured by class name; return the Figure."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    names = np.asarray(classes)[np.asarray(labels)]
    fig, axes = plt.subplots(1, len(maps), figsize=(5.2 * len(maps) + 1.8, 4.6), squeeze=False)
    for i, (ax, (method, points)) in enumerate(zip(axes[0], maps.items())):
        sns.scatterplot(x=points[:, 0], y=points[:, 1], hue=names, hue_order=list(classes), palette="tab10",
                        s=7, linewidth=0, ax=ax, legend=i == len(maps) - 1)
        ax.set_xlabel(f"{method} axis 1")
        ax.set_ylabel(f"{method} axis 2")
        ax.set_title(method)
    axes[0, -1].legend(title="class", bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=8, markerscale=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
