"""Chapter 12: the variational autoencoder a learner writes (saved from the notebook): the reparameterisation, the KL
term, the likelihood, the loss with free bits and warm-up, the loop, and the bits-per-dimension arithmetic.

The code comes from ``course_utils/chapters/ch12_vae.py``, generated from the notebook's ``#@save`` cells
(tests/test_save_cells.py keeps the two in sync); the exercises' checks are proven in tests/test_exercises.py.
"""
from __future__ import annotations

import math

import pytest
import torch

from course_utils.chapters.ch01_feature_extractors import Autoencoder, image_loader
from course_utils.chapters.ch12_vae import (SIGMA, VAE, bits_per_dim, dequantise, evaluate_vae, gaussian_nll,
                                            kl_to_standard_normal, reparameterise, train_epoch_vae, vae_loss)

from conftest import needs_fashion


def test_the_kl_term_matches_torch_distributions_and_is_zero_only_at_the_prior():
    g = torch.Generator().manual_seed(0)
    mu, logvar = 3 * torch.randn(500, 16, generator=g), 2 * torch.randn(500, 16, generator=g)
    ours = kl_to_standard_normal(mu, logvar)
    truth = torch.distributions.kl_divergence(torch.distributions.Normal(mu, torch.exp(0.5 * logvar)),
                                              torch.distributions.Normal(0.0, 1.0))
    assert ours.shape == mu.shape
    torch.testing.assert_close(ours, truth, atol=1e-4, rtol=1e-5)
    assert kl_to_standard_normal(torch.zeros(3), torch.zeros(3)).abs().max() == 0
    assert (ours > 0).all()  # positive everywhere else
    assert kl_to_standard_normal(torch.ones(1), torch.tensor([math.log(4.0)])).item() == pytest.approx(
        0.5 * (1 + 4 - 1 - math.log(4)))  # the value the notebook prints (1.3069)


def test_the_reparameterisation_sends_gradients_to_mu_and_logvar_and_not_through_eps():
    mu = torch.tensor([2.0, -1.0, 0.5], requires_grad=True)
    logvar = torch.tensor([math.log(0.25), 0.0, 1.0], requires_grad=True)
    torch.manual_seed(7)
    z = reparameterise(mu, logvar)
    torch.manual_seed(7)
    eps = torch.randn(3)  # the same draw: eps is a constant of the computation, not a function of the parameters
    z.sum().backward()
    assert torch.equal(mu.grad, torch.ones(3))  # dz/dmu = 1
    torch.testing.assert_close(logvar.grad, 0.5 * torch.exp(0.5 * logvar.detach()) * eps)  # dz/dlogvar = std*eps/2
    assert (logvar.grad != 0).all()
    torch.testing.assert_close(z.detach(), mu.detach() + torch.exp(0.5 * logvar.detach()) * eps)
    # and the draws have the asked-for statistics
    torch.manual_seed(0)
    draws = reparameterise(torch.full((200_000,), 2.0), torch.full((200_000,), math.log(9.0)))
    assert draws.mean().item() == pytest.approx(2.0, abs=0.03) and draws.std().item() == pytest.approx(3.0, abs=0.03)


def test_the_gaussian_likelihood_is_torch_distributions_normal_and_mse_up_to_a_constant():
    torch.manual_seed(0)
    x, x_hat = torch.rand(5, 1, 28, 28), torch.rand(5, 1, 28, 28)
    truth = -torch.distributions.Normal(x_hat, SIGMA).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_nll(x, x_hat), truth, atol=1e-3, rtol=1e-5)
    constant = 0.5 * 784 * math.log(2 * math.pi * SIGMA ** 2)
    sse = (x - x_hat).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(gaussian_nll(x, x_hat) - constant, sse / (2 * SIGMA ** 2))


def test_the_loss_is_reconstruction_plus_beta_kl_and_free_bits_stop_the_pull_below_lambda():
    torch.manual_seed(0)
    x, x_hat = torch.rand(4, 1, 28, 28), torch.rand(4, 1, 28, 28)
    mu = torch.tensor([[0.05, 2.0]] * 4, requires_grad=True)  # one value near the prior, one far from it
    logvar = torch.zeros(4, 2, requires_grad=True)
    loss, rec, kl = vae_loss(x, x_hat, mu, logvar, beta=3.0)
    assert rec.item() == pytest.approx(gaussian_nll(x, x_hat).mean().item())
    assert kl.item() == pytest.approx(0.5 * (0.05 ** 2 + 2.0 ** 2))
    assert loss.item() == pytest.approx(rec.item() + 3.0 * kl.item())
    loss, _, _ = vae_loss(x, x_hat, mu, logvar, beta=1.0, free_bits=0.5)
    loss.backward()
    assert (mu.grad[:, 0] == 0).all() and (mu.grad[:, 1] != 0).all()  # KL 0.00125 < 0.5 nats: no pull on value 0


def test_the_vae_builds_on_chapter_01s_blocks_for_both_datasets():
    for shape, latent in [((1, 28, 28), 16), ((3, 32, 32), 64)]:
        model = VAE(shape, latent)
        x_hat, mu, logvar = model(torch.rand(2, *shape))
        assert x_hat.shape == (2, *shape) and mu.shape == logvar.shape == (2, latent)
        assert 0 < x_hat.min() and x_hat.max() < 1
        assert torch.equal(model.encode(torch.zeros(1, *shape)), model.posterior(torch.zeros(1, *shape))[0])
        plain = Autoencoder(shape[0])
        assert type(model.encoder) is type(plain.encoder) and type(model.decoder) is type(plain.decoder)


def test_bits_per_dimension_arithmetic():
    assert bits_per_dim(0.0, 784) == pytest.approx(8.0)  # a uniform density on [0, 1): one of 256 levels, blindly
    assert bits_per_dim(-784 * math.log(2), 784) == pytest.approx(7.0)  # one bit per value better
    assert bits_per_dim(-7500.0, 3072) == pytest.approx((-7500 / 3072 + math.log(256)) / math.log(2))
    assert bits_per_dim(0.0, 10, levels=2) == pytest.approx(1.0)
    # dequantisation: each level lands in its own bin of width 1/256, and the same seed gives the same noise
    images = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    y = dequantise(images, seed=3)
    assert ((y * 256).floor() == images.float()).all() and torch.equal(y, dequantise(images, seed=3))
    assert not torch.equal(y, dequantise(images, seed=4))


def test_a_gaussian_that_knows_the_level_saves_nearly_all_8_bits_per_dimension():
    """Dequantised copies of one constant image: a Gaussian centred on the bin, as wide as the noise, needs under 1 bit
    per value, where a blind uniform density needs 8 (the test above)."""
    images = torch.full((50, 1, 4, 4), 128, dtype=torch.uint8)
    y = dequantise(images).flatten(1)
    sigma = 1 / 256 / math.sqrt(12)  # the noise's standard deviation
    nats = gaussian_nll(y, torch.full_like(y, 128.5 / 256), sigma).mean().item()
    assert bits_per_dim(nats, 16) < 1.0  # nearly all 8 bits saved: the model knows the level


@needs_fashion
def test_a_few_training_steps_on_real_images_reduce_the_loss_and_evaluate_reports_consistent_terms(fashion_test):
    data = fashion_test.subset(512, seed=0)
    torch.manual_seed(0)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = image_loader(data.images, 128)
    torch.manual_seed(1)
    before = evaluate_vae(model, loader)
    history = train_epoch_vae(model, image_loader(data.images, 32, shuffle=True), optimizer)
    history += train_epoch_vae(model, image_loader(data.images, 32, shuffle=True, seed=1), optimizer, step=16)
    torch.manual_seed(1)
    after = evaluate_vae(model, loader)
    assert len(history) == 32 and not model.training
    assert after["negative ELBO"] < 0.8 * before["negative ELBO"]
    assert sum(h[0] for h in history[-4:]) < sum(h[0] for h in history[:4])
    assert after["negative ELBO"] == pytest.approx(after["reconstruction"] + after["KL"])
    assert after["KL"] == pytest.approx(after["KL per value"].sum().item(), rel=1e-5)
    assert after["KL per value"].shape == after["variance of the mean"].shape == (16,)


@needs_fashion
def test_kl_warm_up_starts_at_beta_zero(fashion_test):
    """With warm-up the first step's loss is the reconstruction alone (beta 0 + 1/steps); without it, rec + beta * KL."""
    data = fashion_test.subset(64, seed=0)
    losses = {}
    for warmup in (0, 1000):
        torch.manual_seed(0)
        model = VAE()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        torch.manual_seed(5)
        (loss, rec, kl), = train_epoch_vae(model, image_loader(data.images, 64), optimizer, beta=100.0,
                                           warmup_steps=warmup)
        losses[warmup] = (loss, rec, kl)
    loss, rec, kl = losses[0]
    assert loss == pytest.approx(rec + 100.0 * kl, rel=1e-5)
    loss, rec, kl = losses[1000]
    assert loss == pytest.approx(rec + 0.1 * kl, rel=1e-5)  # beta * 1/1000 at step 1
