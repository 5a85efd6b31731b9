"""Chapter 08 (the latent space): 2-D maps of codes, retrieval, linear probes, interpolation, random codes, odd inputs.

Also the chapter's models (a reference model when one is installed, else the recommended
autoencoder trained in the profile's budget), shared by the notebook and its tests.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..data import ImageData, to_float
from ..engine import eval_mode
from ..environment import Profile
from ..errors import CourseError
from ..metrics import embed_images, model_value_range
from ..models import RECOMMENDED_TRAINING, recommended_autoencoder
from ..metrics import fit_pca

# The chapter's reference model per dataset, and the code size of the autoencoder trained when it is missing.
REFERENCES = {"fashion-mnist": "fashion-mnist-196", "cifar10": "cifar10-256"}
CODE_SIZES = {"fashion-mnist": 196, "cifar10": 256}
# Inverse regularisation strengths C of the logistic-regression probe, chosen on the validation split.
PROBE_C = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
TSNE_POINTS = 2_000  # t-SNE maps at most this many test images (its cost grows faster than linearly)


def one_thread():
    """Return a context in which scikit-learn's OpenMP and BLAS loops run on one thread.

    t-SNE, neighbour searches and the probes' small solver steps run many short parallel loops; on a
    2-core machine that is busy with anything else the threads wait for each other, and one thread
    is many times faster (t-SNE of 80 points: seconds instead of minutes on this course's CI machine).
    """
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=1)


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
    """Return (train, validation, test) features for 'codes' (the model's), 'PCA' (as many values) and 'pixels'."""
    codes = tuple(embed_images(model, split).numpy() for split in (train, val, test))
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
def _check_rows(features: np.ndarray, labels: np.ndarray | torch.Tensor, k: int) -> tuple[np.ndarray, np.ndarray]:
    features, labels = np.asarray(features), np.asarray(labels)
    if features.ndim != 2 or len(features) != len(labels):
        raise CourseError(f"Need one feature row per label: got features of shape {features.shape} and "
                          f"{len(labels)} labels.")
    if not 0 < k < len(features):
        raise CourseError(f"k must be between 1 and the number of items less one ({len(features) - 1}), got {k}.")
    return features, labels


def nearest_neighbours(features: np.ndarray, queries: Sequence[int], k: int = 8) -> np.ndarray:
    """Return, for each query row, the indices of its ``k`` nearest other rows (Euclidean), nearest first."""
    from sklearn.neighbors import NearestNeighbors

    features, _ = _check_rows(features, np.zeros(len(features)), k)
    queries = np.asarray(queries)
    with one_thread():
        _, found = NearestNeighbors(n_neighbors=k + 1).fit(features).kneighbors(features[queries])
    return np.stack([[j for j in row if j != q][:k] for q, row in zip(queries, found)])


def precision_at_k(features: np.ndarray, labels: np.ndarray | torch.Tensor, k: int = 10) -> float:
    """Return the mean share of each item's ``k`` nearest other items (Euclidean) that carry its label."""
    features, labels = _check_rows(features, labels, k)
    found = nearest_neighbours(features, np.arange(len(features)), k)
    return float((labels[found] == labels[:, None]).mean())


def retrieval_rows(features: Mapping[str, np.ndarray], data: ImageData, query: int, k: int = 8
                   ) -> dict[str, torch.Tensor]:
    """Return, per kind of feature, the query image then its ``k`` nearest images in ``data``, named with the hit count.

    ``features`` maps a kind ('codes', 'pixels', ...) to one row per image of ``data``; a row's name
    says how many of the ``k`` share the query's class, e.g. 'codes: 6/8 Sneaker'.
    """
    rows = {}
    for kind, rows_of_kind in features.items():
        if len(rows_of_kind) != len(data):
            raise CourseError(f"The {kind!r} features have {len(rows_of_kind)} rows for {len(data)} images.")
        found = torch.from_numpy(nearest_neighbours(rows_of_kind, [query], k)[0])
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


# --------------------------------------------------------------------------- interpolation and decoding
def interpolate(a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Return ``steps`` evenly spaced blends from ``a`` to ``b`` (both included), stacked on a new first axis."""
    if a.shape != b.shape:
        raise CourseError(f"Can only interpolate between tensors of one shape, got {tuple(a.shape)} and "
                          f"{tuple(b.shape)}.")
    if steps < 2:
        raise CourseError(f"An interpolation needs at least 2 steps (its two ends), got {steps}.")
    t = torch.linspace(0, 1, steps, dtype=torch.float32).view(-1, *[1] * a.ndim)
    a, b = a.float().unsqueeze(0), b.float().unsqueeze(0)
    return torch.where(t < 1, a + t * (b - a), b)  # exactly a at t = 0 and b at t = 1


@torch.no_grad()
def decode_codes(model: nn.Module, codes: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """Return the images (float [0, 1], on the CPU) the model's decoder makes of flat codes."""
    device = next(model.parameters()).device
    low, high = model_value_range(model)
    with eval_mode(model):
        shape = model.encode(torch.zeros(1, *image_shape, device=device)).shape[1:]  # flat or a small map
        if codes.ndim != 2 or codes.shape[1] != int(np.prod(shape)):
            raise CourseError(f"This model's codes have {int(np.prod(shape))} values ({tuple(shape)}); got codes of "
                              f"shape {tuple(codes.shape)}. Use codes from cu.embed_images(model, ...).")
        out = model.decode(codes.float().to(device).view(-1, *shape)).float()
    return ((out - low) / (high - low)).clamp_(0, 1).cpu()


def interpolation_strips(model: nn.Module, a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> dict[str, torch.Tensor]:
    """Return two strips from image ``a`` to image ``b`` (C, H, W): blended pixels, and decoded blended codes."""
    pair = torch.stack([a, b])
    codes = embed_images(model, pair if pair.dtype == torch.uint8 else pair.float())
    return {"pixel space": interpolate(to_float(a), to_float(b), steps),
            "code space": decode_codes(model, interpolate(codes[0], codes[1], steps), tuple(a.shape))}


def sample_codes(codes: torch.Tensor, n: int, source: str = "fitted", seed: int = 0) -> torch.Tensor:
    """Return ``n`` random codes: from a Gaussian fitted to ``codes`` ('fitted') or from N(0, I) ('standard')."""
    generator = torch.Generator().manual_seed(seed)
    codes = codes.double()
    if source == "standard":
        return torch.randn(n, codes.shape[1], generator=generator, dtype=torch.float64).float()
    if source != "fitted":
        raise CourseError(f"source must be 'fitted' or 'standard', got {source!r}.")
    if len(codes) < 2:
        raise CourseError("Fitting a Gaussian needs at least 2 codes.")
    mean = codes.mean(0)
    cov = torch.cov(codes.T).reshape(codes.shape[1], codes.shape[1])
    values, vectors = torch.linalg.eigh(cov)  # cov = V diag(values) V^T; a square root that tolerates rank loss
    root = vectors * values.clamp(min=0).sqrt()
    noise = torch.randn(n, codes.shape[1], generator=generator, dtype=torch.float64)
    return (mean + noise @ root.T).float()


def round_trip_change(model: nn.Module, codes: torch.Tensor, image_shape: Sequence[int]) -> torch.Tensor:
    """Return, per code, how much decoding then encoding again moves it: ||encode(decode(z)) - z|| / ||z||.

    Codes of real images come back almost unchanged; a code where the decoder was never trained
    decodes to an image the encoder does not map back to it.
    """
    again = embed_images(model, decode_codes(model, codes, image_shape))
    return (again - codes.float()).norm(dim=1) / codes.float().norm(dim=1).clamp(min=1e-12)


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


# --------------------------------------------------------------------------- figures
def show_rows(rows: Mapping[str, torch.Tensor], title: str | None = None, scale: float = 1.1):
    """Show each named batch of images (uint8 or float [0, 1]) as one labelled row; return the Figure."""
    import matplotlib.pyplot as plt

    from ..plots import show_images

    if not rows:
        raise CourseError("show_rows needs at least one row of images.")
    n = max(len(images) for images in rows.values())
    fig, axes = plt.subplots(len(rows), 1, figsize=(scale * n + 1.5, scale * len(rows) * 1.1), squeeze=False)
    for ax, (name, images) in zip(axes[:, 0], rows.items()):
        show_images(images, nrow=n, ax=ax)
        ax.set_axis_on()
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(name, rotation=0, ha="right", va="center")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


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
