"""Code-size sweeps: compression arithmetic, spatial code sizes, the one-pass PCA curve, sharpness, plots."""
from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
import torch
import torch.nn.functional as F

import course_utils as cu


def test_compression_table_is_values_over_code_size():
    table = cu.compression_table((3, 32, 32), [64, 200, 1000])
    assert list(table.index) == [64, 200, 1000]
    assert table.loc[64, "values per image"] == 3072
    assert table.loc[64, "compression ratio"] == 48.0
    assert table.loc[200, "compression ratio"] == pytest.approx(15.36)
    assert table.loc[1000, "% of values kept"] == pytest.approx(100 * 1000 / 3072)
    # A float32 code of 1000 values takes more bytes than the 3,072-byte uint8 image it encodes.
    assert table.loc[1000, "bytes ratio (uint8 image / float32 code)"] == pytest.approx(0.768)


def test_spatial_code_size_rounds_down_to_whole_maps():
    assert cu.spatial_code_size(200, 16) == 192
    assert cu.spatial_code_size(256, 16) == 256
    assert cu.spatial_code_size(1000, 16) == 992
    assert cu.spatial_code_size(10, 49) == 49  # never less than one channel
    with pytest.raises(cu.CourseError):
        cu.spatial_code_size(0, 16)


@pytest.mark.parametrize("image_shape", [(3, 32, 32), (1, 28, 28)])
def test_recommended_model_codes_have_the_requested_sizes(image_shape):
    flat = cu.recommended_autoencoder(image_shape, 200)
    channels, h, w = cu.bottleneck_map(flat, image_shape)
    assert channels > 0 and h * w > 0
    assert cu.code_shape(flat, image_shape) == (200,)
    size = cu.spatial_code_size(200, h * w)
    spatial = cu.recommended_autoencoder(image_shape, size, "spatial")
    shape = cu.code_shape(spatial, image_shape)
    assert shape[1:] == (h, w) and shape[0] * h * w == size == spatial.code_size
    assert flat.training and spatial.training  # probing shapes leaves the training mode alone


def _split(data: cu.ImageData, start: int, stop: int) -> cu.ImageData:
    return cu.ImageData(data.images[start:stop], data.labels[start:stop], data.classes, data.name, data.split)


@pytest.fixture(scope="module")
def cifar_small(cifar_test):
    # Two disjoint slices of the real test split stand in for train and test.
    return _split(cifar_test, 0, 1600), _split(cifar_test, 1600, 1900)


def test_pca_curve_is_exact_pca_and_agrees_with_pca_baseline_on_cifar(cifar_small):
    import numpy as np
    from sklearn.decomposition import PCA

    train, test = cifar_small  # 1,600 images < 3,072 values: the Gram-matrix branch
    curve = cu.pca_curve(train, test, [16, 200, 1500], keep_reconstructions=4)
    x = train.images.flatten(1).numpy().astype(np.float32) / 255
    x_test = test.images.flatten(1).numpy().astype(np.float32) / 255
    for k in (16, 200, 1500):
        exact = PCA(k, svd_solver="full").fit(x)
        recon = np.clip(exact.inverse_transform(exact.transform(x_test)), 0, 1)
        assert curve[k]["mse"] == pytest.approx(float(((recon - x_test) ** 2).mean()), rel=1e-4)
        assert curve[k]["explained_variance"] == pytest.approx(float(exact.explained_variance_ratio_.sum()),
                                                               abs=1e-5)
        reference = cu.pca_baseline(train, test, k)  # randomized solver: close, never better
        assert curve[k]["mse"] == pytest.approx(reference["mse"], rel=1e-2)
        assert curve[k]["mse"] <= reference["mse"] * (1 + 1e-4)
        assert curve[k]["ssim"] == pytest.approx(reference["ssim"], abs=5e-3)
    mses = [curve[k]["mse"] for k in (16, 200, 1500)]
    assert mses[0] > mses[1] > mses[2]  # more components never hurt
    assert curve[200]["psnr"] == pytest.approx(cu.psnr_from_mse(curve[200]["mse"]))
    assert curve[16]["reconstructions"].shape == (4, 3, 32, 32)


def test_pca_curve_matches_pca_baseline_on_fashion_mnist(fashion_test):
    train, test = _split(fashion_test, 0, 2000), _split(fashion_test, 2000, 2300)
    curve = cu.pca_curve(train, test, [8, 64], ssim=False)  # 2,000 images > 784 pixels: covariance branch
    for k in (8, 64):
        assert curve[k]["mse"] == pytest.approx(cu.pca_baseline(train, test, k)["mse"], rel=2e-3)
    assert "ssim" not in curve[8]


def test_pca_curve_refuses_impossible_sizes(cifar_small):
    train, test = cifar_small
    with pytest.raises(cu.CourseError, match="n_components"):
        cu.pca_curve(train, test, [len(train) + 1])


def test_gradient_energy_drops_when_real_images_are_blurred(cifar_test):
    images = cifar_test.images[:64]
    sharp = cu.gradient_energy(images)
    blurred = F.interpolate(F.avg_pool2d(images.float() / 255, 4), scale_factor=4, mode="bilinear")
    assert sharp.shape == (64,)
    assert (cu.gradient_energy(blurred) < sharp).float().mean() > 0.95
    assert torch.allclose(cu.gradient_energy(images.float() / 255), sharp)
    assert cu.gradient_energy(torch.full((2, 3, 8, 8), 0.5)).abs().max() == 0


def test_sweep_code_sizes_keys_results_by_code_size(fashion_test):
    train, test = _split(fashion_test, 0, 512), _split(fashion_test, 512, 768)

    def build(k):
        return cu.ConvAutoencoder(28, 1, (8, 16), latent=k)

    results, comparison = cu.sweep_code_sizes(build, [4, 32], train, test, epochs=1, batch_size=128,
                                              progress=False, device="cpu", label="flat")
    assert list(results) == [4, 32] and set(comparison.models) == {"flat 4", "flat 32"}
    for k, scores in results.items():
        assert scores["code size"] == k and 0 < scores["mse"] < 0.2 and scores["psnr"] > 5
    with pytest.raises(cu.CourseError, match="keeps 98 values"):
        cu.sweep_code_sizes(lambda k: cu.ConvAutoencoder(28, 1, (8, 16), latent=2, bottleneck="spatial"),
                            [5], train, test, epochs=1, progress=False, device="cpu")


def test_plot_code_size_curve_draws_two_log_panels():
    curve = {k: {"mse": 1 / k, "psnr": 10 + k / 100} for k in (64, 256, 1000)}
    fig = cu.plot_code_size_curve({"AE": curve, "PCA": curve}, title="t", image_values=3072)
    mse_ax, psnr_ax = fig.axes[:2]
    assert mse_ax.get_xscale() == "log" and psnr_ax.get_xscale() == "log" and mse_ax.get_yscale() == "log"
    assert "code size" in mse_ax.get_xlabel() and "MSE" in mse_ax.get_ylabel() and "PSNR" in psnr_ax.get_ylabel()
    assert len(mse_ax.lines) == 2 and list(mse_ax.lines[0].get_xdata()) == [64, 256, 1000]
    plt.close(fig)
