"""Chapter 01 (convnets as feature extractors): the helpers of its two cautions, on real and made-up images.

What MSE rewards (``image_edits``: a one-pixel shift, a half mask, a blur) and what batch normalisation
couples (``batches_of`` and ``reconstruct_in_batches``: training-mode statistics tie an image to its batch).
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import course_utils as cu
from course_utils.chapters.ch01_feature_extractors import (MASKED, SHIFTED, batches_of, image_edits, plot_versions,
                                                           reconstruct_in_batches)

from conftest import needs_fashion


# --------------------------------------------------------------------------- what MSE rewards
def test_image_edits_shift_mask_and_blur_as_described():
    x = torch.rand(2, 3, 8, 8)
    edits = image_edits(x, blur_sigma=1.0)
    shifted, masked = edits[SHIFTED], edits[MASKED]
    blurred = edits["blurred (Gaussian, sigma 1 px)"]
    mean = x.mean(dim=(1, 2, 3))
    assert torch.equal(shifted[:, :, 1:, 1:], x[:, :, :-1, :-1])  # every pixel one right and one down
    assert torch.allclose(shifted[:, :, 0, :], mean[:, None, None].expand(2, 3, 8))  # the vacated row and column
    assert torch.allclose(shifted[:, :, :, 0], mean[:, None, None].expand(2, 3, 8))
    assert torch.equal(masked[:, :, 4:], x[:, :, 4:]) and torch.allclose(masked[:, :, :4], mean[:, None, None, None]
                                                                         .expand(2, 3, 4, 8))
    assert blurred.shape == x.shape and blurred.std() < x.std()  # smoother, same size
    assert x.dtype == torch.float32 and not torch.equal(shifted, x)  # the input is not edited in place


def test_image_edits_take_uint8_images_and_refuse_single_ones():
    images = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    edits = image_edits(images)
    assert all(e.dtype == torch.float32 and 0 <= e.min() and e.max() <= 1 for e in edits.values())
    with pytest.raises(cu.CourseError, match="batch of images"):
        image_edits(torch.rand(1, 28, 28))


@needs_fashion
def test_on_fashion_mnist_a_one_pixel_shift_costs_more_mse_than_a_blur():
    test = cu.load_dataset("fashion-mnist", "test").subset(500, seed=0)
    x = cu.to_float(test.images)
    mse = {name: (e - x).pow(2).flatten(1).mean(1) for name, e in image_edits(test).items()}
    blur = mse["blurred (Gaussian, sigma 1 px)"]
    assert (mse[SHIFTED] > blur).float().mean() > 0.95  # the chapter's claim holds on almost every image
    assert (mse[SHIFTED] > mse[MASKED]).float().mean() > 0.5  # and the shift usually loses to the half mask


# --------------------------------------------------------------------------- what batch norm couples
def test_batches_cover_every_image_once_and_by_class_batches_hold_one_class():
    labels = torch.tensor([0, 1, 2] * 10)
    for grouping in ("mixed", "by class"):
        batches = batches_of(labels, 4, grouping)
        assert sorted(torch.cat(batches).tolist()) == list(range(30)) and max(len(b) for b in batches) == 4
    assert all(len(labels[b].unique()) == 1 for b in batches_of(labels, 4, "by class"))
    assert any(len(labels[b].unique()) > 1 for b in batches_of(labels, 4, "mixed"))
    with pytest.raises(cu.CourseError, match="mixed"):
        batches_of(labels, 4, "sorted")
    with pytest.raises(cu.CourseError, match="at least 2"):
        batches_of(labels, 1)


def _batch_norm_model() -> nn.Module:
    cu.seed_everything(0)
    model = cu.recommended_autoencoder((1, 28, 28), 196, "spatial")
    with torch.no_grad():  # running statistics that differ from any batch's, as after training
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.train()


def test_with_running_statistics_an_image_does_not_depend_on_its_batch():
    model, images = _batch_norm_model(), torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    labels = torch.tensor([0, 1] * 6)
    a = reconstruct_in_batches(model, images, batches_of(labels, 6, "mixed"), "running")
    b = reconstruct_in_batches(model, images, batches_of(labels, 6, "by class"), "running")
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a, cu.reconstruct(model, images), atol=1e-6)  # what cu.reconstruct (eval mode) gives
    assert model.training  # the model is left as it was


def test_with_batch_statistics_an_image_depends_on_its_batch_and_the_model_is_unchanged():
    model, images = _batch_norm_model(), torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    images[6:] //= 4  # the second half darker: batches by "class" have different statistics
    labels = torch.tensor([0] * 6 + [1] * 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    a = reconstruct_in_batches(model, images, batches_of(labels, 6, "mixed"), "batch")
    b = reconstruct_in_batches(model, images, batches_of(labels, 6, "by class"), "batch")
    assert (a - b).abs().max() > 1e-3  # the same images, other batch-mates, other reconstructions
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # running statistics untouched
    with pytest.raises(cu.CourseError, match="running"):
        reconstruct_in_batches(model, images, [torch.arange(12)], "train")


def test_plot_versions_titles_each_version_with_its_mse():
    import matplotlib.pyplot as plt

    x = torch.rand(3, 1, 8, 8)
    fig = plot_versions(x, {"same": x.clone(), "dark": torch.zeros_like(x)}, [0, 2])
    axes = fig.axes
    assert len(axes) == 6 and axes[0].get_title() == "original\n"
    assert axes[1].get_title() == "same\nMSE 0.0000"
    assert axes[5].get_title() == f"MSE {float(x[2].pow(2).mean()):.4f}" and axes[3].get_ylabel() == "test image 2"
    plt.close(fig)
