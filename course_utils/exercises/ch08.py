"""Chapter 08's exercises: precision@k by hand, a diagonal Gaussian, the length of random codes, spherical blends."""
from __future__ import annotations

import math

import torch

from . import exercise


# --------------------------------------------------------------------------- 08.1 precision@k by hand
POINTS = [0.0, 1.0, 3.0, 4.0, 9.0]
LABELS = [0, 0, 0, 1, 1]


def _precision_on_a_line(points, labels, k, count_self=False) -> float:
    """Return precision@k of points on a line: the mean share of each point's k nearest that carry its label."""
    shares = []
    for i, (p, y) in enumerate(zip(points, labels)):
        others = sorted((abs(q - p), j) for j, q in enumerate(points) if count_self or j != i)
        shares.append(sum(labels[j] == y for _, j in others[:k]) / k)
    return sum(shares) / len(shares)


PRECISION_BY_HAND = _precision_on_a_line(POINTS, LABELS, 2)  # (1 + 1 + 1/2 + 0 + 1/2) / 5 = 0.6
_WITH_ITSELF = _precision_on_a_line(POINTS, LABELS, 2, count_self=True)  # each point its own first neighbour: 0.8
_HITS = 6  # the count of same-label neighbours, not their share


@exercise("08.1", "precision@k by hand", solution=PRECISION_BY_HAND, wrong=[_WITH_ITSELF, _HITS],
          hint="for each point take its 2 nearest OTHER points (a point is not its own neighbour), count the share "
               "with its label (point 3: neighbours 4 and 1, one of two), then average the five shares")
def _check_precision_by_hand(answer) -> str | None:
    if isinstance(answer, bool) or not isinstance(answer, (int, float)):
        return f"the answer is a number between 0 and 1, got {answer!r}"
    if abs(answer - PRECISION_BY_HAND) < 1e-6:
        return None
    if abs(answer - _WITH_ITSELF) < 1e-6:
        return f"{answer:g} counts each point as its own nearest neighbour"
    if answer > 1:
        return f"{answer:g} is more than 1: precision@k is a share of the k neighbours, averaged over the points"
    return f"{answer:g} is not the mean share of same-label points among each point's 2 nearest others"


# --------------------------------------------------------------------------- 08.2 a diagonal Gaussian
def sample_diagonal(codes: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """Return n random codes whose values are drawn independently, each with its own mean and std in codes (N x D)."""
    mean, std = codes.mean(0), codes.std(0)  # D values each
    noise = torch.randn(n, codes.shape[1], generator=torch.Generator().manual_seed(seed))  # n x D of N(0, 1)
    return mean + std * noise  # n x D


def _with_the_variance(codes, n, seed=0):  # a typical wrong answer: the variance where the std belongs
    noise = torch.randn(n, codes.shape[1], generator=torch.Generator().manual_seed(seed))
    return codes.mean(0) + codes.var(0) * noise


def _one_std_for_all(codes, n, seed=0):  # another: one standard deviation over all values
    noise = torch.randn(n, codes.shape[1], generator=torch.Generator().manual_seed(seed))
    return codes.mean(0) + codes.std() * noise


def _full_covariance(codes, n, seed=0):  # another: the chapter's full covariance, not a diagonal one
    root = torch.linalg.cholesky(torch.cov(codes.T))
    noise = torch.randn(n, codes.shape[1], generator=torch.Generator().manual_seed(seed))
    return codes.mean(0) + noise @ root.T


def _known_codes() -> torch.Tensor:
    """Return 5,000 codes of 4 values with means (5, -3, 0, 1), stds (2, 0.5, 1, 3), values 0 and 1 correlated."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(5000, 4, generator=g)
    base[:, 1] = 0.8 * base[:, 0] + 0.6 * base[:, 1]  # correlation 0.8 between values 0 and 1, still unit variance
    return base * torch.tensor([2.0, 0.5, 1.0, 3.0]) + torch.tensor([5.0, -3.0, 0.0, 1.0])


@exercise("08.2", "a diagonal Gaussian", solution=sample_diagonal,
          wrong=[_with_the_variance, _one_std_for_all, _full_covariance],
          hint="mean = codes.mean(0) and std = codes.std(0), one of each per value (not one for all values, not the "
               "variance); then mean + std * torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) draws "
               "every value on its own")
def _check_sample_diagonal(answer) -> str | None:
    codes = _known_codes()
    samples = answer(codes, 20_000, 1)
    if not isinstance(samples, torch.Tensor) or tuple(samples.shape) != (20_000, 4):
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else type(samples).__name__
        return f"sample_diagonal(codes of shape (5000, 4), 20000) returned {shape}, not a tensor of shape (20000, 4)"
    samples = samples.double()
    mean, std = codes.double().mean(0), codes.double().std(0)
    if not torch.allclose(samples.mean(0), mean, atol=0.05):
        return f"the samples' means are {samples.mean(0).numpy().round(2)}, the codes' {mean.numpy().round(2)}"
    if not torch.allclose(samples.std(0), std, rtol=0.05):
        return (f"the samples' standard deviations are {samples.std(0).numpy().round(2)}, the codes' "
                f"{std.numpy().round(2)}")
    r = float(torch.corrcoef(samples[:, :2].T)[0, 1])
    if abs(r) > 0.05:
        return (f"the samples' values 0 and 1 are correlated (r = {r:.2f}) as in the codes: a diagonal Gaussian "
                "draws every value independently")
    if not torch.equal(answer(codes, 5, 3), answer(codes, 5, 3)) or torch.equal(answer(codes, 5, 3),
                                                                               answer(codes, 5, 4)):
        return "the same seed must give the same samples, and another seed other samples"
    return None


# --------------------------------------------------------------------------- 08.3 the length of a random code
RANDOM_CODE_LENGTHS = (math.sqrt(1024), math.sqrt(1024 / 2))  # about 32 and 22.6: the blend has variance 1/2 per value


@exercise("08.3", "how long is a random code", solution=RANDOM_CODE_LENGTHS,
          wrong=[(1024, 512), (32, 32), (32, 16)],
          hint="a code's squared length is the sum of 1,024 squares of N(0, 1) values, about 1,024, so its length is "
               "about the square root; each value of (a + b) / 2 has variance (1 + 1) / 4 = 1/2")
def _check_random_code_lengths(answer) -> str | None:
    try:
        length, middle = (float(x) for x in answer)
    except (TypeError, ValueError):
        return f"the answer is a pair of numbers (length, middle_length), got {answer!r}"
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 2000, 1024, generator=g, dtype=torch.float64)
    truth, truth_middle = float(a.norm(dim=1).median()), float(((a + b) / 2).norm(dim=1).median())
    if abs(length - truth) > 0.5:
        return f"one code's length {length:g} is off: 2,000 random codes of 1,024 values have a median length of " \
               f"{truth:.1f}"
    if abs(middle - truth_middle) > 0.5:
        return f"the middle blend's length {middle:g} is off: it has a median of {truth_middle:.1f} over 2,000 pairs"
    return None


# --------------------------------------------------------------------------- 08.4 spherical interpolation
def slerp(a: torch.Tensor, b: torch.Tensor, steps: int = 8) -> torch.Tensor:
    """Return steps blends from code a to code b (both 1-D) along the arc between them, stacked: steps x D."""
    t = torch.linspace(0, 1, steps, dtype=a.dtype).view(-1, 1)  # steps x 1
    theta = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))  # the angle between a and b
    return (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta)  # steps x D


def _linear(a, b, steps=8):  # a typical wrong answer: the linear blend of section 5
    t = torch.linspace(0, 1, steps, dtype=a.dtype).view(-1, 1)
    return (1 - t) * a + t * b


def _weights_swapped(a, b, steps=8):  # another: the weights swapped, so the strip runs from b to a
    t = torch.linspace(0, 1, steps, dtype=a.dtype).view(-1, 1)
    theta = torch.arccos((a @ b / (a.norm() * b.norm())).clamp(-1, 1))
    return (torch.sin(t * theta) * a + torch.sin((1 - t) * theta) * b) / torch.sin(theta)


@exercise("08.4", "spherical interpolation", solution=slerp, wrong=[_linear, _weights_swapped],
          hint="theta = torch.arccos(a @ b / (a.norm() * b.norm())), t = torch.linspace(0, 1, steps).view(-1, 1); "
               "the blend is (torch.sin((1 - t) * theta) * a + torch.sin(t * theta) * b) / torch.sin(theta): "
               "all of a at t = 0, all of b at t = 1")
def _check_slerp(answer) -> str | None:
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, 64, generator=g)
    b = 1.7 * b  # ends of different lengths
    got = answer(a, b, 7)
    if not isinstance(got, torch.Tensor) or tuple(got.shape) != (7, 64):
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        return f"slerp(a, b, 7) for two codes of 64 values returned {shape}, not a tensor of shape (7, 64)"
    if not (torch.allclose(got[0], a, atol=1e-4) and torch.allclose(got[-1], b, atol=1e-4)):
        return "the first blend must be a and the last one b"
    truth = slerp(a, b, 7)
    if not torch.allclose(got, truth, atol=1e-4, rtol=1e-4):
        return f"its middle blends differ from slerp's by up to {(got - truth).abs().max():.3g}"
    c = a / a.norm() * b.norm()  # a code as long as b
    lengths = answer(c, b, 9).norm(dim=1)
    if not torch.allclose(lengths, b.norm().expand(9), rtol=1e-3):
        return f"between two codes of length {b.norm():.2f} its blends have lengths down to {lengths.min():.2f}"
    return None
