"""Chapter 02's claims about its pool and stride autoencoders, checked against the library."""
from __future__ import annotations

import pytest

import course_utils as cu

FASHION = dict(image_size=28, in_channels=1, widths=(16, 32), latent=4, bottleneck="spatial")
CIFAR = dict(image_size=32, in_channels=3, widths=(16, 32), latent=8, bottleneck="spatial")


def _ours(config, downsample):
    return cu.ConvAutoencoder(**config, downsample=downsample, upsample="transposed", kernel_size=4)


@pytest.mark.parametrize("config, shape", [(FASHION, (1, 28, 28)), (CIFAR, (3, 32, 32))])
def test_pool_and_stride_share_parameters_but_pool_convolutions_cost_four_times(config, shape):
    pool, stride = _ours(config, "pool"), _ours(config, "stride")
    assert cu.count_parameters(pool) == cu.count_parameters(stride)
    p, s = cu.layer_table(pool, shape), cu.layer_table(stride, shape)
    p_convs = p[p.layer.str.startswith("encoder") & (p.type == "Conv2d")]
    s_convs = s[s.layer.str.startswith("encoder") & (s.type == "Conv2d")]
    assert list(p_convs.parameters) == list(s_convs.parameters)
    assert list(p_convs.MFLOPs) == pytest.approx([4 * f for f in s_convs.MFLOPs])
    # the decoders are identical, so the whole model is only ~1.5x cheaper with strides
    ratio = cu.flops_per_image(pool, shape) / cu.flops_per_image(stride, shape)
    assert 1.3 < ratio < 1.6


@pytest.mark.parametrize("config, shape", [(FASHION, (1, 28, 28)), (CIFAR, (3, 32, 32))])
def test_code_receptive_fields_follow_the_rule(config, shape):
    for downsample, stack, expected in (("pool", [(3, 1), (2, 2)] * 2, 10), ("stride", [(3, 2)] * 2, 7)):
        table = cu.layer_table(_ours(config, downsample), shape)
        code_rf = int(table[table.layer == "bottleneck.encode"]["receptive field"].item())
        assert code_rf == cu.receptive_field(stack)[-1] == expected


def test_code_sizes_match_the_seed_tutorials(fashion_test, cifar_test):
    for downsample in ("pool", "stride"):
        assert cu.code_size(_ours(FASHION, downsample), fashion_test.images[:1]) == 196
        assert cu.code_size(_ours(CIFAR, downsample), cifar_test.images[:1]) == 512
    assert cu.code_size(cu.KapilshAutoencoder(), fashion_test.images[:1]) == 196
    assert cu.code_size(cu.GeeksforGeeksAutoencoder(), cifar_test.images[:1]) == 512
    assert cu.code_size(cu.PaperspaceAutoencoder(), cifar_test.images[:1]) == 200
