"""Chapter 07's exercises: ROC-AUC from ranks, a worst-pixel score, a threshold that flags k images, a negated score."""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from . import exercise


def _values(result) -> np.ndarray:
    return np.asarray(result.detach().cpu() if isinstance(result, torch.Tensor) else result, dtype=np.float64)


# --------------------------------------------------------------------------- 07.1 ROC-AUC from ranks
def roc_auc_from_ranks(scores: torch.Tensor, is_anomaly: torch.Tensor) -> float:
    """Return the ROC-AUC from the ranks of the scores (tied scores share their average rank)."""
    scores = torch.as_tensor(scores, dtype=torch.float64)
    is_anomaly = torch.as_tensor(is_anomaly).bool()
    _, group, counts = torch.unique(scores, return_inverse=True, return_counts=True)  # distinct scores, sorted
    counts = counts.double()  # how many scores share each distinct value
    last = torch.cumsum(counts, 0)  # the rank (from 1) of the last score of each group of equal scores
    ranks = (last - (counts - 1) / 2)[group]  # each score: the average rank of its group
    a, n = int(is_anomaly.sum()), int((~is_anomaly).sum())
    return float((ranks[is_anomaly].sum() - a * (a + 1) / 2) / (a * n))


def _ranks_without_ties(scores, is_anomaly):  # a typical wrong answer: equal scores get different ranks
    scores, is_anomaly = torch.as_tensor(scores, dtype=torch.float64), torch.as_tensor(is_anomaly).bool()
    ranks = scores.argsort(stable=True).argsort().double() + 1
    a, n = int(is_anomaly.sum()), int((~is_anomaly).sum())
    return float((ranks[is_anomaly].sum() - a * (a + 1) / 2) / (a * n))


@exercise("07.1", "ROC-AUC from ranks", solution=roc_auc_from_ranks, wrong=[_ranks_without_ties],
          hint="give every score its rank from 1 (lowest) to n, equal scores the average of their ranks "
               "(torch.unique(scores, return_inverse=True, return_counts=True) finds the groups); then "
               "AUC = (sum of the anomalies' ranks - A(A+1)/2) / (A * N)")
def _check_ranks(answer) -> str | None:
    from sklearn.metrics import roc_auc_score

    g = np.random.default_rng(7)
    cases = {"four tied scores": (np.array([0.3, 0.3, 0.3, 0.3]), np.array([0, 0, 1, 1])),
             "the chapter's toy with one tie": (np.array([0.1, 0.2, 0.4, 0.4, 0.5, 0.6]), np.array([0, 0, 0, 1, 1, 1])),
             "scores without ties": (g.random(300), (g.random(300) < 0.3).astype(np.int64)),
             "scores with many ties": (g.integers(0, 8, 500).astype(np.float64),
                                       (g.random(500) < 0.6).astype(np.int64))}
    for name, (scores, labels) in cases.items():
        truth = roc_auc_score(labels, scores)
        got = answer(torch.from_numpy(scores), torch.from_numpy(labels))
        if not isinstance(got, (float, int)) or abs(got - truth) > 1e-9:
            return f"on {name} it returned {got!r}, scikit-learn's roc_auc_score gives {truth:.6f}"
    return None


# --------------------------------------------------------------------------- 07.2 a worst-pixel score
@torch.no_grad()  # scoring needs no gradients
def worst_pixel_scores(model: nn.Module, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Return each uint8 image's largest squared pixel error (on [0, 1]) under the model, in evaluation mode."""
    model.eval()  # batch norm uses its running statistics: a score does not depend on the batch
    device = next(model.parameters()).device
    scores = []
    for start in range(0, len(images), batch_size):
        x = images[start:start + batch_size].to(device).float() / 255  # N x C x H x W, 0..255 => 0..1
        scores.append(((model(x) - x) ** 2).flatten(1).amax(1).cpu())  # N: each image's worst pixel
    return torch.cat(scores)


def _in_training_mode(model, images, batch_size=500):  # a typical wrong answer: no model.eval()
    with torch.no_grad():
        x = images.float() / 255
        return ((model(x) - x) ** 2).flatten(1).amax(1)


def _mean_not_max(model, images, batch_size=500):  # a typical wrong answer: the chapter's mean error
    model.eval()
    with torch.no_grad():
        x = images.float() / 255
        return ((model(x) - x) ** 2).flatten(1).mean(1)


def _small_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),  # 1x8x8 => 4x8x8
                          nn.Conv2d(4, 1, 3, padding=1), nn.Sigmoid())  # 4x8x8 => 1x8x8
    with torch.no_grad():
        model(torch.rand(64, 1, 8, 8) * 3)  # training mode: running statistics that differ from a batch's own
    return model.train()  # handed over in training mode, as after fit


@exercise("07.2", "a worst-pixel score", solution=worst_pixel_scores, wrong=[_in_training_mode, _mean_not_max],
          hint="call model.eval() first (batch norm then uses its running statistics), work under torch.no_grad(), "
               "convert the uint8 images to [0, 1] with .float() / 255, and take each image's largest squared "
               "error: ((model(x) - x) ** 2).flatten(1).amax(1)")
def _check_worst_pixel(answer) -> str | None:
    images = torch.randint(0, 256, (12, 1, 8, 8), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    model = _small_model()
    truth = worst_pixel_scores(copy.deepcopy(model), images)
    got = answer(model, images)
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (12,):
        return f"it returned {type(got).__name__} of shape {tuple(getattr(got, 'shape', ()))}, not a tensor of " \
               "12 scores for 12 images"
    if got.requires_grad:
        return "its scores carry a gradient record (requires_grad=True): score under torch.no_grad()"
    if not torch.allclose(got.detach().cpu().double(), truth.double(), atol=1e-6):
        return f"its scores differ from the reference by up to {float((got.double() - truth.double()).abs().max()):.2g}"
    return None


# --------------------------------------------------------------------------- 07.3 a threshold that flags k images
def threshold_flagging(normal_errors: torch.Tensor, k: int) -> float:
    """Return the lowest threshold that flags (error > threshold) exactly k of the normal images (no ties, k < N)."""
    ordered = torch.as_tensor(normal_errors).sort(descending=True).values  # largest first
    return float(ordered[k])  # the (k+1)-th largest: the k errors above it are flagged, this one is not


def _off_by_one(normal_errors, k):  # a typical wrong answer: the k-th largest error, which flags only k - 1
    return float(torch.as_tensor(normal_errors).sort(descending=True).values[k - 1])


def _percentile(normal_errors, k):  # a typical wrong answer: a percentile interpolates between two errors
    errors = np.asarray(normal_errors, dtype=np.float64)
    return float(np.percentile(errors, 100 * (1 - k / errors.size)))


@exercise("07.3", "a threshold that flags k images", solution=threshold_flagging, wrong=[_off_by_one, _percentile],
          hint="sort the errors from largest to smallest; an image is flagged when its error is above the threshold, "
               "so the lowest threshold that flags exactly k is the (k+1)-th largest error: sorted[k]")
def _check_threshold(answer) -> str | None:
    errors = torch.from_numpy(np.random.default_rng(3).lognormal(-4, 0.5, 500))
    ordered = errors.sort(descending=True).values
    for k in (1, 5, 25, 100):
        got = answer(errors, k)
        if not isinstance(got, (float, int)):
            return f"threshold_flagging(errors, {k}) returned {type(got).__name__}, not a number"
        flagged = int((errors > got).sum())
        if flagged != k:
            return f"with k={k} its threshold {got:.6g} flags {flagged} of the 500 images"
        if got > float(ordered[k]):
            return f"with k={k} its threshold {got:.6g} flags {k} images, but {float(ordered[k]):.6g} is lower " \
                   "and flags the same ones"
    return None


# --------------------------------------------------------------------------- 07.4 a score that points the wrong way
@exercise("07.4", "the negated score", solution=0.7, wrong=[0.3, 0.5, -0.3],
          hint="negating the score reverses the order of every (anomaly, normal) pair: the pairs in the right order "
               "become wrong and the wrong ones right, so AUC(-score) = 1 - AUC(score)")
def _check_negated(answer) -> str | None:
    if not isinstance(answer, (int, float)):
        return f"the answer is a number between 0 and 1, got {answer!r}"
    if abs(answer - 0.7) > 1e-6:
        return f"{answer} is not the ROC-AUC of the negated score"
    return None
