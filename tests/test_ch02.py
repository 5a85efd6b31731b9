"""Chapter 02 (pooling vs strided encoders): the chapter's claims, the learner's saved code and its plumbing.

The learner's stages, encoder and measures come from the generated module (the notebook's ``#@save`` cells); the
models are the notebook's own (``FASHION``, ``CIFAR`` and ``ours`` from ``_ch02_experiments``).
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

import course_utils as cu
from course_utils.chapters._ch02_experiments import (CIFAR, FASHION, ours, plot_receptive_fields,
                                                     plot_shift_sensitivity, shift_sensitivity,
                                                     shift_sensitivity_at_init)
from course_utils.chapters.ch01_feature_extractors import Autoencoder, Encoder
from course_utils.chapters.ch02_pooling_vs_strided import (StageEncoder, code_change, influence_map, pool_stage,
                                                           shift_images, strided_stage)


# --------------------------------------------------------------------------- the learner's stages and encoder
@pytest.mark.parametrize("c_in, c_out, side", [(1, 16, 28), (3, 16, 32), (16, 32, 14)])
def test_both_stages_halve_the_map_with_the_same_parameters(c_in, c_out, side):
    x = torch.rand(2, c_in, side, side)
    pool, stride = pool_stage(c_in, c_out), strided_stage(c_in, c_out)
    assert pool(x).shape == stride(x).shape == (2, c_out, side // 2, side // 2)
    assert cu.count_parameters(pool) == cu.count_parameters(stride) == 9 * c_in * c_out + c_out
    assert sum(isinstance(m, nn.MaxPool2d) for m in pool) == 1 and not any(isinstance(m, nn.MaxPool2d) for m in stride)
    assert [m.stride for m in pool if isinstance(m, nn.Conv2d)] == [(1, 1)]
    assert [m.stride for m in stride if isinstance(m, nn.Conv2d)] == [(2, 2)]


def test_the_strided_stage_encoder_is_chapter_01s_encoder():
    cu.seed_everything(0)
    first = Encoder()
    mine = StageEncoder(strided_stage, 1, (16, 32), 4)
    with torch.no_grad():
        for a, b in zip(mine.parameters(), first.parameters(), strict=True):
            a.copy_(b)
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(mine(x), first(x))
    assert StageEncoder(pool_stage, 3, (16, 32, 64), 8)(torch.rand(1, 3, 32, 32)).shape == (1, 8, 4, 4)


# --------------------------------------------------------------------------- the chapter's claims
@pytest.mark.parametrize("config, shape", [(FASHION, (1, 28, 28)), (CIFAR, (3, 32, 32))])
def test_pool_and_stride_share_parameters_but_pool_stages_cost_four_times(config, shape):
    pool, stride = ours(config, "pool"), ours(config, "stride")
    assert cu.count_parameters(pool) == cu.count_parameters(stride)
    assert isinstance(pool, Autoencoder) and isinstance(pool.encoder, StageEncoder)
    p, s = cu.layer_table(pool, shape), cu.layer_table(stride, shape)
    p_convs = p[p.layer.str.startswith("encoder.stages") & (p.type == "Conv2d")]
    s_convs = s[s.layer.str.startswith("encoder.stages") & (s.type == "Conv2d")]
    assert len(p_convs) == 2 and list(p_convs.parameters) == list(s_convs.parameters)
    assert list(p_convs.MFLOPs) == pytest.approx([4 * f for f in s_convs.MFLOPs])
    code = [t[t.layer == "encoder.code"].MFLOPs.item() for t in (p, s)]
    assert code[0] == code[1] > 0  # the code convolution works on the same small map in both
    assert list(p[p.layer.str.startswith("decoder")].MFLOPs) == list(s[s.layer.str.startswith("decoder")].MFLOPs)
    # the encoder is 4x cheaper but for its code convolution; the shared decoder brings the whole model below 2x
    ratio = cu.flops_per_image(pool, shape) / cu.flops_per_image(stride, shape)
    assert 1.7 < ratio < 2.0


@pytest.mark.parametrize("config, shape", [(FASHION, (1, 28, 28)), (CIFAR, (3, 32, 32))])
def test_code_receptive_fields_follow_the_rule(config, shape):
    for downsample, stack, expected in (("pool", [(3, 1), (2, 2)] * 2, 18), ("stride", [(3, 2)] * 2, 15)):
        table = cu.layer_table(ours(config, downsample), shape)
        code_rf = int(table[table.layer == "encoder.code"]["receptive field"].item())
        assert code_rf == cu.receptive_field(stack + [(3, 1)])[-1] == expected


def test_code_sizes_match_the_seed_tutorials(fashion_test, cifar_test):
    for downsample in ("pool", "stride"):
        assert cu.code_size(ours(FASHION, downsample), fashion_test.images[:1]) == 196
        assert cu.code_size(ours(CIFAR, downsample), cifar_test.images[:1]) == 512
    assert cu.code_size(cu.KapilshAutoencoder(), fashion_test.images[:1]) == 196
    assert cu.code_size(cu.GeeksforGeeksAutoencoder(), cifar_test.images[:1]) == 512
    assert cu.code_size(cu.PaperspaceAutoencoder(), cifar_test.images[:1]) == 200
    with pytest.raises(cu.CourseError, match="'pool' or 'stride'"):
        ours(FASHION, "avg")


# --------------------------------------------------------------------------- influence_map
def test_influence_map_of_max_pool_marks_only_each_windows_maximum(fashion_test):
    image = fashion_test.images[0].float()  # 1x28x28, a real garment
    counts = influence_map(nn.MaxPool2d(2), image)
    assert counts.shape == (28, 28)
    assert int(counts.sum()) == 14 * 14  # one survivor per 2x2 window
    windows = counts.reshape(14, 2, 14, 2).sum(dim=(1, 3))
    assert torch.equal(windows, torch.ones(14, 14, dtype=windows.dtype))
    # where a window has a unique maximum, the survivor is that maximum
    blocks = image[0].reshape(14, 2, 14, 2).permute(0, 2, 1, 3).reshape(14, 14, 4)
    marked = counts.reshape(14, 2, 14, 2).permute(0, 2, 1, 3).reshape(14, 14, 4).argmax(-1)
    unique = (blocks == blocks.max(-1, keepdim=True).values).sum(-1) == 1
    assert torch.equal(marked[unique], blocks.argmax(-1)[unique])


def test_influence_map_of_strided_convolutions_counts_covering_windows():
    torch.manual_seed(0)
    x = torch.rand(1, 4, 4)
    overlapping = influence_map(nn.Conv2d(1, 1, 3, stride=2, padding=1), x)
    per_axis = torch.tensor([1, 2, 1, 1])  # windows centred on 0 and 2 cover rows -1..1 and 1..3
    assert torch.equal(overlapping, per_axis[:, None] * per_axis[None, :])
    tiling = influence_map(nn.Conv2d(1, 1, 2, stride=2), x)
    assert torch.equal(tiling, torch.ones(4, 4, dtype=tiling.dtype))
    same = influence_map(nn.Conv2d(1, 1, 3, padding=1), x)
    assert int(same[1, 1]) == 9 and int(same[0, 0]) == 4
    assert torch.equal(influence_map(nn.AvgPool2d(2), x), torch.ones(4, 4, dtype=tiling.dtype))  # exercise 02.2


def test_influence_map_sums_over_channels():
    x = torch.rand(3, 6, 6)
    counts = influence_map(nn.Conv2d(3, 5, 1), x)  # every input value feeds 5 output channels
    assert torch.equal(counts, torch.full((6, 6), 15, dtype=counts.dtype))


# --------------------------------------------------------------------------- shift_images and code_change
def test_shift_images_moves_content_and_replicates_the_border(cifar_test):
    images = cifar_test.images[:4]
    right = shift_images(images, 3)
    assert right.dtype == torch.uint8 and right.shape == images.shape
    assert torch.equal(right[..., 3:], images[..., :-3])
    assert torch.equal(right[..., :3], images[..., :1].expand(-1, -1, -1, 3))
    left = shift_images(images.float(), -2)
    assert torch.equal(left[..., :-2], images[..., 2:].float())
    assert torch.equal(left[..., -2:], images[..., -1:].float().expand(-1, -1, -1, 2))
    assert torch.equal(shift_images(images, 0), images)


def test_code_change_is_zero_for_no_move_and_one_for_swapping_images():
    torch.manual_seed(0)
    codes = torch.randn(5, 4, 7, 7)
    assert code_change(codes, codes) == 0.0
    assert code_change(codes, codes.roll(1, dims=0)) == pytest.approx(1.0)  # each code replaced by another image's
    assert code_change(codes, codes + 0.5 * (codes.roll(1, dims=0) - codes)) == pytest.approx(0.5)


# --------------------------------------------------------------------------- shift_sensitivity (plumbing)
def test_shift_sensitivity_of_identity_and_of_global_average(fashion_test):
    images = fashion_test.images[:64]
    pixels = shift_sensitivity(lambda x: x, images, shifts=(0, 1, 4))
    assert pixels[0] == 0.0
    assert 0.0 < pixels[1] < pixels[4]  # shifting further changes the image more
    # Fashion-MNIST garments sit on a black background, so a global mean barely notices a shift
    mean = shift_sensitivity(lambda x: x.mean(dim=(1, 2, 3))[:, None], images, shifts=(1, 4))
    assert mean[1] < 0.05 * pixels[1]
    x = cu.to_float(images)
    direct = sum((shift_images(a, 1) - a).norm() for a in x) / sum((b - a).norm() for a, b in zip(x, x.roll(1, 0)))
    assert pixels[1] == pytest.approx(float(direct), rel=1e-4)
    with pytest.raises(cu.CourseError, match="out of its frame"):
        shift_sensitivity(lambda x: x, images, shifts=(28,))
    with pytest.raises(cu.CourseError, match="at least two images"):
        shift_sensitivity(lambda x: x, images[:1], shifts=(1,))


def test_shift_sensitivity_finds_equivariance_at_multiples_of_the_stride(fashion_test):
    images = fashion_test.images[:32]
    pool4 = nn.MaxPool2d(4)  # 28x28 => 7x7, total stride 4
    raw = shift_sensitivity(pool4, images, shifts=(1, 4))
    aligned = shift_sensitivity(pool4, images, shifts=(4,), stride=4)
    assert aligned[4] < 0.1 * raw[4]  # moved one cell, the pooled map is (almost) the same
    assert raw[1] > aligned[4]
    with pytest.raises(cu.CourseError, match="multiple"):
        shift_sensitivity(pool4, images, shifts=(2,), stride=4)
    with pytest.raises(cu.CourseError, match="feature maps"):
        shift_sensitivity(lambda x: x.flatten(1), images, shifts=(4,), stride=4)


def test_shift_sensitivity_uses_the_model_value_range_batches_and_restores_training_mode(cifar_test):
    images = cifar_test.images[:10]
    model = cu.PaperspaceAutoencoder()
    model.train()
    seen = []

    class Probe(nn.Module):
        value_range = (-1.0, 1.0)

        def forward(self, x):
            seen.append((x.shape[0], float(x.min()), self.training))
            return model.encoder(x)

    probe = Probe().train()
    batched = shift_sensitivity(probe.forward, images, shifts=(1,), batch_size=3)  # batches of 3, 3, 3, 1
    assert [n for n, _, _ in seen] == [3, 3, 3, 1] * 2 and min(lo for _, lo, _ in seen) < 0
    assert not any(t for _, _, t in seen) and probe.training
    scores = shift_sensitivity(model.encoder, images, shifts=(1,), value_range=(-1, 1))
    assert 0 < scores[1] < 2 and batched[1] == pytest.approx(scores[1], rel=1e-5)  # batches change nothing
    assert shift_sensitivity(model.encode, images, shifts=(1,)) == scores  # encode's owner gives (-1, 1)
    assert model.training


def test_shift_sensitivity_at_init_builds_one_model_per_seed_and_pairs_same_shaped_designs(fashion_test):
    images = fashion_test.images[:64]
    pool = shift_sensitivity_at_init(lambda: ours(FASHION, "pool"), images, seeds=(0, 1, 2))
    stride = shift_sensitivity_at_init(lambda: ours(FASHION, "stride"), images, seeds=(0, 1, 2))
    assert len(pool) == 3 and len(set(pool)) == 3 and all(0 < v < 2 for v in pool + stride)  # three samples
    cu.seed_everything(1)
    model = ours(FASHION, "pool")
    assert pool[1] == shift_sensitivity(model.encode, images, (1,))[1]  # seed 1's model, untrained
    cu.seed_everything(1)
    same = ours(FASHION, "stride")  # same parameter shapes, same seed: the same initial weights
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), same.state_dict().values()))
    with pytest.raises(cu.CourseError, match="at least one seed"):
        shift_sensitivity_at_init(lambda: ours(FASHION, "pool"), images, seeds=())


# --------------------------------------------------------------------------- plots
def test_plot_receptive_fields_draws_one_line_per_encoder():
    tables = {"pool": cu.layer_table(StageEncoder(pool_stage, 3, (16, 32, 64), 8), (3, 32, 32)),
              "stride": cu.layer_table(StageEncoder(strided_stage, 3, (16, 32, 64), 8), (3, 32, 32))}
    fig = plot_receptive_fields(tables, image_size=32)
    ax = fig.axes[0]
    lines = {line.get_label(): list(line.get_ydata()) for line in ax.get_lines()}
    assert lines["pool"] == cu.receptive_field([(3, 1), (2, 2)] * 3 + [(3, 1)]) == [3, 4, 8, 10, 18, 22, 38]
    assert lines["stride"] == cu.receptive_field([(3, 2)] * 3 + [(3, 1)]) == [3, 7, 15, 31]
    assert ax.get_xlabel() and ax.get_ylabel()
    plt.close(fig)


def test_plot_receptive_fields_names_a_curve_that_lies_on_another():
    pool3 = cu.layer_table(cu.ConvEncoder(3, (16, 32, 64), "pool"), (3, 32, 32))
    pool2 = cu.layer_table(cu.ConvEncoder(3, (16, 32), "pool"), (3, 32, 32))
    tables = {"pool, 3 stages": pool3, "pool, 2 stages": pool2,
              "stride": cu.layer_table(cu.ConvEncoder(3, (16, 32), "stride"), (3, 32, 32))}
    fig = plot_receptive_fields(tables)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert set(lines) == {"pool, 3 stages", "pool, 2 stages: on the 'pool, 3 stages' curve", "stride"}
    hidden = lines["pool, 2 stages: on the 'pool, 3 stages' curve"]
    assert list(hidden.get_ydata()) == [3, 4, 8, 10]
    assert hidden.get_markerfacecolor() == "none" and hidden.get_zorder() > lines["stride"].get_zorder()
    assert lines["pool, 3 stages"].get_linestyle() != hidden.get_linestyle()
    plt.close(fig)


def test_plot_shift_sensitivity_draws_sorted_curves():
    fig = plot_shift_sensitivity({"a": {2: 0.4, 0: 0.0, 1: 0.2}})
    line = fig.axes[0].get_lines()[0]
    assert list(line.get_xdata()) == [0, 1, 2] and list(line.get_ydata()) == [0.0, 0.2, 0.4]
    assert "pixels" in fig.axes[0].get_xlabel()
    plt.close(fig)
