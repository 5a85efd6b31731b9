"""course_utils.experiments: controlled comparisons, code-size sweeps, and what a Comparison shows."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
from torch import nn

import course_utils as cu
from course_utils.chapters._ch04_analysis import pca_curve


def _tiny(latent: int = 16, bottleneck: str = "flat") -> cu.ConvAutoencoder:
    return cu.ConvAutoencoder(28, 1, (8, 16), latent, bottleneck=bottleneck)


@pytest.fixture(scope="module")
def fashion_parts(fashion_test):
    """Return disjoint train (512 images) and test (300) parts of the real Fashion-MNIST test split."""
    def part(start, stop):
        return cu.ImageData(fashion_test.images[start:stop], fashion_test.labels[start:stop], fashion_test.classes)
    return part(0, 512), part(512, 812)


@pytest.fixture(scope="module")
def two_comparisons(fashion_parts):
    train, test = fashion_parts
    first = cu.compare_models({"a": _tiny, "b": _tiny}, train, test, epochs=1, batch_size=128, progress=False,
                              device="cpu")
    second = cu.compare_models({"kapilsh": cu.KapilshAutoencoder}, train, test, epochs=1, batch_size=128,
                               progress=False, device="cpu")
    return first, second


def test_compare_models_gives_every_contender_the_same_start(two_comparisons):
    comparison, _ = two_comparisons
    assert comparison.results["a"]["mse"] == comparison.results["b"]["mse"]  # same seed, same model: same result
    table = comparison.table()
    assert list(table.index) == ["a", "b"] and {"mse", "psnr", "ssim", "parameters"} <= set(table.columns)
    assert comparison.results["a"]["code size"] == 16 and comparison.results["a"]["train images/s"] > 0


def test_merge_keeps_both_in_order_and_refuses_a_name_twice(two_comparisons):
    first, second = two_comparisons
    merged = first.merge(second)
    for part in ("results", "histories", "models"):
        assert list(getattr(merged, part)) == ["a", "b", "kapilsh"]
    assert merged.results["kapilsh"] is second.results["kapilsh"] and merged.models["a"] is first.models["a"]
    assert list(first.results) == ["a", "b"]  # the originals are left as they were
    with pytest.raises(cu.CourseError, match="Both comparisons hold a model named 'a', 'b'; rename one"):
        first.merge(first)


def test_show_reconstructions_draws_originals_each_model_and_extra_rows(two_comparisons, fashion_parts):
    comparison = two_comparisons[0].merge(two_comparisons[1])
    _, test = fashion_parts
    fig = comparison.show_reconstructions(test, n=6, title="t", extra={"PCA": torch.rand(10, 1, 28, 28)})
    assert isinstance(fig, plt.Figure)
    assert [ax.get_ylabel() for ax in fig.axes] == ["original", "a", "b", "kapilsh", "PCA"]
    grid = fig.axes[1].images[0].get_array()
    assert grid.shape[1] == 1 + 6 * (28 + 1)  # six images, one pixel of padding around each
    plt.close(fig)


def test_code_size_is_measured_from_encode():
    images = torch.zeros(1, 3, 32, 32, dtype=torch.uint8)
    assert cu.code_size(cu.GeeksforGeeksAutoencoder(), images) == 8 * 8 * 8  # 8x8x8 on 32x32 CIFAR-10
    assert cu.code_size(cu.GeeksforGeeksAutoencoder(), torch.zeros(1, 3, 64, 64, dtype=torch.uint8)) == 2048
    assert cu.code_size(cu.PaperspaceAutoencoder(200), images) == 200 == cu.PaperspaceAutoencoder(200).code_size
    assert cu.code_size(cu.KapilshAutoencoder(), torch.zeros(1, 1, 28, 28, dtype=torch.uint8)) == 196
    model = cu.ConvAutoencoder(32, 3, (8, 16), latent=3, bottleneck="spatial")
    assert cu.code_size(model, images) == model.code_size == 3 * 8 * 8
    with pytest.raises(cu.CourseError, match="Sequential has no encode"):
        cu.code_size(nn.Sequential(nn.Conv2d(3, 3, 1)), images)


def test_sweep_code_sizes_keys_results_by_code_size(fashion_parts):
    train, test = fashion_parts
    results, comparison = cu.sweep_code_sizes(_tiny, [4, 32], train, test, epochs=1, batch_size=128,
                                              progress=False, device="cpu", label="flat")
    assert list(results) == [4, 32] and set(comparison.models) == {"flat 4", "flat 32"}
    for k, scores in results.items():
        assert scores["code size"] == k and 0 < scores["mse"] < 0.2 and scores["psnr"] > 5
    with pytest.raises(cu.CourseError, match="keeps 98 values"):
        cu.sweep_code_sizes(lambda k: _tiny(2, "spatial"), [5], train, test, epochs=1, progress=False,
                            device="cpu")


def test_pca_counts_its_parameters_one_way_everywhere(fashion_test):
    """What PCA stores to encode and decode: k axes of C*H*W values plus the mean image, in every chapter."""
    assert cu.pca_parameters(196, (1, 28, 28)) == 196 * 784 + 784
    assert cu.pca_parameters(256, (3, 32, 32)) == 256 * 3072 + 3072
    train, test = fashion_test.subset(600), fashion_test.subset(100, seed=1)
    assert cu.pca_baseline(train, test, 8)["parameters"] == cu.pca_parameters(8, (1, 28, 28))
    assert pca_curve(train, test, [4, 8], ssim=False)[8]["parameters"] == cu.pca_parameters(8, (1, 28, 28))
