"""Chapter 12's exercises: the KL between two Gaussians, several reparameterised draws, bits per dimension, beta as a
variance."""
from __future__ import annotations

import math

import torch

from . import exercise


# --------------------------------------------------------------------------- 12.1 the KL between two Gaussians
def kl_normal(mu1: torch.Tensor, logvar1: torch.Tensor, mu2: torch.Tensor, logvar2: torch.Tensor) -> torch.Tensor:
    """Return KL(N(mu1, exp(logvar1)) || N(mu2, exp(logvar2))) of each value, in nats."""
    return 0.5 * (logvar2 - logvar1 + (logvar1.exp() + (mu1 - mu2).pow(2)) / logvar2.exp() - 1)


def _without_the_half(mu1, logvar1, mu2, logvar2):  # a typical wrong answer: log(sigma2/sigma1) taken as logvar2-logvar1
    return logvar2 - logvar1 + (logvar1.exp() + (mu1 - mu2).pow(2)) / (2 * logvar2.exp()) - 0.5


def _only_against_the_standard_normal(mu1, logvar1, mu2, logvar2):  # ignores the second Gaussian
    return 0.5 * (mu1.pow(2) + logvar1.exp() - 1 - logvar1)


@exercise("12.1", "the KL between two Gaussians", solution=kl_normal,
          wrong=[_without_the_half, _only_against_the_standard_normal],
          hint="log(sigma2 / sigma1) is (logvar2 - logvar1) / 2, and the variances are exp(logvar): "
               "0.5 * (logvar2 - logvar1 + (exp(logvar1) + (mu1 - mu2)**2) / exp(logvar2) - 1)")
def _check_kl_normal(answer) -> str | None:
    g = torch.Generator().manual_seed(0)
    mu1, mu2 = 2 * torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
    logvar1, logvar2 = torch.randn(200, 8, generator=g), torch.randn(200, 8, generator=g)
    got = answer(mu1, logvar1, mu2, logvar2)
    if not isinstance(got, torch.Tensor) or got.shape != mu1.shape:
        return f"it returned {type(got).__name__} of shape {tuple(getattr(got, 'shape', ()))}, not a tensor {tuple(mu1.shape)}"
    truth = torch.distributions.kl_divergence(torch.distributions.Normal(mu1, (0.5 * logvar1).exp()),
                                              torch.distributions.Normal(mu2, (0.5 * logvar2).exp()))
    if not torch.allclose(got, truth, atol=1e-4, rtol=1e-4):
        return f"it differs from torch.distributions.kl_divergence by up to {(got - truth).abs().max():.3g} nats"
    zeros = torch.zeros_like(mu1)
    standard = 0.5 * (mu1.pow(2) + logvar1.exp() - 1 - logvar1)
    if not torch.allclose(answer(mu1, logvar1, zeros, zeros), standard, atol=1e-5):
        return "against N(0, 1) it does not give kl_to_standard_normal"
    return None


# --------------------------------------------------------------------------- 12.2 several draws per image
def reparameterise_k(mu: torch.Tensor, logvar: torch.Tensor, k: int) -> torch.Tensor:
    """Return k draws of z ~ N(mu, exp(logvar)), shape k x N x latent, through which gradients flow."""
    eps = torch.randn(k, *mu.shape, dtype=mu.dtype, device=mu.device)  # k x N x latent, one eps per draw
    return mu + torch.exp(0.5 * logvar) * eps  # broadcast over the k draws


def _one_eps_for_all_draws(mu, logvar, k):  # a typical wrong answer: the same eps k times
    eps = torch.randn_like(mu)
    return (mu + torch.exp(0.5 * logvar) * eps).expand(k, *mu.shape)


def _variance_for_std(mu, logvar, k):  # a typical wrong answer: exp(logvar) is the variance, not the std
    return mu + torch.exp(logvar) * torch.randn(k, *mu.shape)


def _no_gradient(mu, logvar, k):  # a typical wrong answer: torch.normal draws, but no gradient reaches mu or logvar
    std = torch.exp(0.5 * logvar.detach())
    return torch.normal(mu.detach().expand(k, *mu.shape), std.expand(k, *mu.shape))


@exercise("12.2", "several draws per image", solution=reparameterise_k,
          wrong=[_one_eps_for_all_draws, _variance_for_std, _no_gradient],
          hint="draw eps = torch.randn(k, *mu.shape), one for every draw, and return mu + exp(logvar / 2) * eps: "
               "mu and logvar broadcast over the first dimension, and the gradient flows through them")
def _check_reparameterise_k(answer) -> str | None:
    torch.manual_seed(0)
    mu = torch.tensor([[2.0, -1.0, 0.0]], requires_grad=True)
    logvar = torch.tensor([[math.log(0.25), 0.0, math.log(4.0)]], requires_grad=True)  # std 0.5, 1, 2
    z = answer(mu, logvar, 20_000)
    if not isinstance(z, torch.Tensor) or tuple(z.shape) != (20_000, 1, 3):
        return f"for k=20,000 and mu of shape (1, 3) it returned shape {tuple(getattr(z, 'shape', ()))}, not (20000, 1, 3)"
    if not z.requires_grad:
        return "no gradient flows from the draws to mu and logvar"
    z.sum().backward()
    if mu.grad is None or logvar.grad is None or mu.grad.abs().min() == 0 or logvar.grad.abs().min() == 0:
        return "the gradient does not reach both mu and logvar"
    if not torch.allclose(mu.grad, torch.full_like(mu, 20_000.0)):
        return f"the gradient for mu is {mu.grad.tolist()}, not k = 20,000 (dz/dmu = 1 for each draw)"
    z = z.detach()
    means, stds = z.mean(0)[0], z.std(0)[0]
    if (means - mu.detach()[0]).abs().max() > 0.05 or (stds - torch.tensor([0.5, 1.0, 2.0])).abs().max() > 0.05:
        return (f"the draws have means {means.numpy().round(2).tolist()} and standard deviations "
                f"{stds.numpy().round(2).tolist()}, not [2, -1, 0] and [0.5, 1, 2]")
    return None


# --------------------------------------------------------------------------- 12.3 bits per dimension, by hand
CIFAR_DIMS = 3 * 32 * 32
CIFAR_BITS_PER_DIM = (-7500 + CIFAR_DIMS * math.log(256)) / (CIFAR_DIMS * math.log(2))


@exercise("12.3", "bits per dimension, by hand", solution=round(CIFAR_BITS_PER_DIM, 4),
          wrong=[round(-7500 / (CIFAR_DIMS * math.log(2)), 4), round((-7500 + CIFAR_DIMS * math.log(256)) / CIFAR_DIMS, 4)],
          hint="add 3,072 * ln 256 nats (the dequantisation's bins of width 1/256), then divide by 3,072 values and "
               "by ln 2 nats per bit")
def _check_bits_per_dim(answer) -> str | None:
    if not isinstance(answer, (int, float)):
        return f"the answer is a number of bits per dimension, got {answer!r}"
    if abs(answer - CIFAR_BITS_PER_DIM) <= 0.01:
        return None
    if abs(answer - (CIFAR_BITS_PER_DIM - 8)) <= 0.01:
        return f"{answer:g} is the density's number, without the 8 bits per value that the bins of width 1/256 add"
    return f"{answer:g} is not it"


# --------------------------------------------------------------------------- 12.4 beta is a variance
@exercise("12.4", "beta is a variance", solution=0.2, wrong=[0.4, 0.05, 0.025],
          hint="beta * KL + SSE / (2 sigma^2) = beta * (KL + SSE / (2 sigma^2 beta)): the new variance is sigma^2 * beta, "
               "so the new sigma is sigma * sqrt(beta)")
def _check_equivalent_sigma(answer) -> str | None:
    if not isinstance(answer, (int, float)):
        return f"the answer is a standard deviation, got {answer!r}"
    if abs(answer - 0.2) <= 1e-6:
        return None
    if abs(answer - 0.4) <= 1e-6:
        return "0.4 is sigma * beta: beta multiplies the variance, not the standard deviation"
    return f"with sigma = {answer:g} the reconstruction term is not the beta = 4 one divided by 4"
