"""Chapter 01: the autoencoder and the training loop a learner writes (saved from the notebook), and `cu.fit` as that loop.

The classes and functions come from ``course_utils/chapters/ch01_feature_extractors.py``, generated from the
notebook's ``#@save`` cells (tests/test_save_cells.py keeps the two in sync).
"""
from __future__ import annotations

import copy

import pytest
import torch

import course_utils as cu
from course_utils.chapters.ch01_feature_extractors import (Autoencoder, Decoder, Encoder, evaluate, image_loader,
                                                           train_epoch)

from conftest import needs_fashion


def test_the_hand_written_autoencoder_keeps_a_196_value_code_and_rebuilds_the_shape():
    x = torch.rand(3, 1, 28, 28)
    model = Autoencoder()
    assert Encoder()(x).shape == (3, 4, 7, 7) and Decoder()(torch.rand(3, 4, 7, 7)).shape == (3, 1, 28, 28)
    out = model(x)
    assert out.shape == x.shape and 0 < out.min() and out.max() < 1  # the sigmoid's range
    assert torch.equal(model.encode(x), model.encoder(x))
    assert sum(p.numel() for p in model.parameters()) == 15_605  # printed in the notebook, checked by nbval too
    assert cu.experiments.code_size(model, torch.zeros(1, 1, 28, 28, dtype=torch.uint8)) == 196
    colour = Autoencoder(in_channels=3)  # the same design takes 32x32 colour images (chapter 05)
    assert colour(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)


def test_image_loader_scales_uint8_to_floats_and_shuffles_the_same_way_for_the_same_seed():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1) * 25
    (x,), = [next(iter(image_loader(images, 10)))]
    assert x.dtype == torch.float32 and torch.allclose(x.flatten(), images.flatten().float() / 255)
    orders = [[float(b[0][0]) for (b,) in image_loader(images, 1, shuffle=True, seed=s)] for s in (0, 0, 1)]
    assert orders[0] == orders[1] != orders[2] and sorted(orders[0]) == sorted(orders[2])


@needs_fashion
def test_the_hand_written_loop_learns_and_evaluate_agrees_with_cu_evaluate(fashion_test):
    data = fashion_test.subset(512, seed=0)
    torch.manual_seed(0)
    model = Autoencoder()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    before = evaluate(model, image_loader(data.images, 128))
    losses = train_epoch(model, image_loader(data.images, 32, shuffle=True), optimizer)
    losses += train_epoch(model, image_loader(data.images, 32, shuffle=True, seed=1), optimizer)
    after = evaluate(model, image_loader(data.images, 128))
    assert len(losses) == 2 * 512 // 32 and not model.training  # evaluate leaves the model in evaluation mode
    assert after < 0.5 * before and sum(losses[-4:]) < sum(losses[:4])
    assert after == pytest.approx(cu.evaluate(model, data, ssim=False)["mse"], rel=1e-4)


@needs_fashion
@pytest.mark.filterwarnings("ignore::course_utils.LearnedNothingWarning")  # 12 steps: too few to beat the mean image
def test_cu_fit_takes_the_same_steps_as_the_hand_written_loop(fashion_test):
    # The chapter's check: the same start, the same batches in the same order, float32, no schedule,
    # plain Adam; two epochs, so fit's look at the first batch must not shift the loader's later orders.
    data = fashion_test.subset(384, seed=2)
    torch.manual_seed(0)
    model = Autoencoder()
    twin = copy.deepcopy(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = image_loader(data.images, 64, shuffle=True, seed=0)
    mine = train_epoch(model, loader, optimizer) + train_epoch(model, loader, optimizer)
    history = cu.fit(twin, image_loader(data.images, 64, shuffle=True, seed=0), epochs=2, lr=2e-3, optimizer="adam",
                     schedule=None, amp=False, channels_last=False, fused=False, device="cpu", progress=False)
    fits = torch.tensor(history.step_losses)
    assert len(fits) == len(mine) == 12
    torch.testing.assert_close(fits, torch.tensor(mine), rtol=1e-5, atol=0)
    for a, b in zip(model.state_dict().values(), twin.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
