"""Chapter 08 (the latent space): the learner's encoding, retrieval, interpolation and random codes (generated module),
and the chapter's plumbing (probes, maps, round trips, odd inputs), on constructed data."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

import course_utils as cu
from course_utils.chapters import _ch08_analysis as analysis
from course_utils.chapters import ch08_latent_space as ch08
from conftest import stored_outputs_text

NOTEBOOK = Path(__file__).resolve().parent.parent / "notebooks" / "08_latent_space.ipynb"


def _tiny_model(seed: int = 0, channels: int = 3, size: int = 32) -> torch.nn.Module:
    torch.manual_seed(seed)
    return cu.recommended_autoencoder((channels, size, size), (size // 4) ** 2, "spatial").eval()  # 1 x h x w code


def _images(n: int, channels: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


# --------------------------------------------------------------------------- retrieval
def test_precision_at_k_counts_same_label_neighbours_on_a_constructed_example():
    points = np.array([[0.], [1.], [2.], [10.], [11.], [12.]])  # two clusters of three on a line
    labels = np.array([0, 0, 0, 1, 1, 1])
    assert ch08.precision_at_k(points, labels, k=2) == 1.0  # both neighbours are in the cluster
    assert ch08.precision_at_k(points, labels, k=3) == pytest.approx(2 / 3)  # the third is across the gap
    # Relabel point 2: points 0 and 1 keep one of two, point 2 keeps none, the far cluster keeps all.
    assert ch08.precision_at_k(points, np.array([0, 0, 1, 1, 1, 1]), k=2) == pytest.approx(4 / 6)


def test_nearest_neighbours_never_return_the_query_even_with_duplicates():
    points = np.array([[0., 0.], [0., 0.], [0., 0.], [5., 5.], [0.1, 0.]])
    found = ch08.nearest_neighbours(points, [0, 1, 3], k=3)
    assert found.shape == (3, 3)
    found = found.tolist()
    for query, row in zip([0, 1, 3], found):
        assert query not in row and len(set(row)) == 3
    assert set(found[0]) == {1, 2, 4}  # the two duplicates first, then the close point
    assert found[2][0] == 4  # 7.00 away, the duplicates 7.07


def test_pixel_neighbours_of_real_clothes_share_their_class_far_above_chance(fashion_test):
    test = fashion_test.subset(1000, seed=0)
    precision = ch08.precision_at_k(analysis.flat_pixels(test), test.labels.numpy(), k=10)
    assert 0.5 < precision < 1.0  # chance is 0.1 for ten balanced classes


def test_retrieval_rows_start_with_the_query_and_count_its_class():
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 1, 4, 4).contiguous()
    data = cu.ImageData(images, torch.tensor([0, 0, 0, 1, 1, 1]), ["shoe", "bag"])
    features = {"near": np.array([[0.], [1.], [2.], [10.], [11.], [12.]]),
                "far": np.array([[0.], [10.], [11.], [1.], [2.], [12.]])}
    rows = analysis.retrieval_rows(features, data, query=0, k=2)
    assert list(rows) == ["near: 2/2 shoe", "far: 0/2 shoe"]
    assert rows["near: 2/2 shoe"][:, 0, 0, 0].tolist() == [0, 1, 2]  # the query, then its neighbours nearest first
    assert rows["far: 0/2 shoe"][:, 0, 0, 0].tolist() == [0, 3, 4]
    with pytest.raises(cu.CourseError, match="rows for 6 images"):
        analysis.retrieval_rows({"codes": np.zeros((5, 1))}, data, query=0, k=2)


def test_nearest_neighbours_and_precision_agree_with_scikit_learn_and_do_not_depend_on_the_batch():
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(3)
    features = rng.normal(size=(300, 12)).astype(np.float32)
    labels = rng.integers(0, 4, 300)
    features[labels == 1] += 1.5  # one class a little apart, so precision is not just chance
    _, found = NearestNeighbors(n_neighbors=6).fit(features).kneighbors(features)
    ours = ch08.nearest_neighbours(features, torch.arange(300), k=5)
    assert ours.shape == (300, 5) and isinstance(ours, torch.Tensor)
    assert np.array_equal(ours.numpy(), found[:, 1:])  # scikit-learn lists each point first, then its 5 nearest
    expected = float((labels[found[:, 1:]] == labels[:, None]).mean())
    for batch_size in (7, 1000):
        assert ch08.precision_at_k(features, labels, k=5, batch_size=batch_size) == pytest.approx(expected, abs=1e-6)
    assert ch08.precision_at_k(torch.from_numpy(features), torch.from_numpy(labels), k=5) == pytest.approx(expected,
                                                                                                          abs=1e-6)


@pytest.mark.parametrize("k", [0, 6])
def test_retrieval_rows_refuse_an_impossible_k(k):
    images = torch.zeros(6, 1, 4, 4, dtype=torch.uint8)
    data = cu.ImageData(images, torch.tensor([0, 0, 0, 1, 1, 1]), ["shoe", "bag"])
    with pytest.raises(cu.CourseError, match="k must be between 1 and the number of images less one"):
        analysis.retrieval_rows({"codes": np.zeros((6, 2))}, data, query=0, k=k)


# --------------------------------------------------------------------------- features and the probe
def test_encode_images_gives_the_course_codes_in_eval_mode_whatever_the_batch():
    model = _tiny_model().train()  # batch norm in training mode: encode_images must switch it off
    images = _images(7)
    codes = ch08.encode_images(model, images, batch_size=3)
    assert not model.training and codes.shape == (7, 64) and codes.device.type == "cpu"
    torch.testing.assert_close(codes, cu.embed_images(model, images), atol=1e-5, rtol=0)
    torch.testing.assert_close(ch08.encode_images(model, images[:1]), codes[:1], atol=1e-5, rtol=0)  # alone: same code
    torch.testing.assert_close(ch08.encode_images(model, cu.to_float(images)), codes, atol=1e-5, rtol=0)  # floats too


def test_linear_probe_separates_separable_data_and_not_random_labels():
    rng = np.random.default_rng(0)

    def blobs(n):
        y = rng.integers(0, 3, n)
        centres = np.array([[6., 0., 0., 0.], [0., 6., 0., 0.], [0., 0., 6., 0.]])
        return centres[y] + rng.normal(size=(n, 4)), y

    train, val, test = blobs(300), blobs(100), blobs(200)
    result = analysis.linear_probe(train, val, test, cs=(0.01, 1.0))
    assert result["test accuracy"] == 1.0 and result["val accuracy"] == 1.0
    assert result["C"] in (0.01, 1.0) and result["features"] == 4
    noise = analysis.linear_probe((train[0], rng.integers(0, 3, 300)), (val[0], rng.integers(0, 3, 100)),
                              (test[0], rng.integers(0, 3, 200)))
    assert noise["test accuracy"] < 0.5  # chance is 1/3: a probe cannot find labels that are not there


def test_linear_probe_keeps_the_regularisation_best_on_validation():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 50))
    y = (x[:, 0] + 0.5 * rng.normal(size=400) > 0).astype(int)  # one informative feature among 50
    splits = (x[:200], y[:200]), (x[200:300], y[200:300]), (x[300:], y[300:])
    alone = {c: analysis.linear_probe(*splits, cs=(c,)) for c in (1e-5, 1e-2, 1.0)}
    chosen = analysis.linear_probe(*splits, cs=tuple(alone))
    best = max(alone, key=lambda c: alone[c]["val accuracy"])
    assert chosen["C"] == best and chosen["test accuracy"] == alone[best]["test accuracy"]
    assert alone[1e-5]["val accuracy"] < alone[best]["val accuracy"]  # shrunk to nothing, it predicts one class
    assert chosen["test accuracy"] > 0.75 and chosen["converged"]


def test_the_regularisation_path_stops_after_patience_values_below_the_best(monkeypatch):
    from sklearn.linear_model import LogisticRegression

    scripted = {1e-4: 0.5, 1e-3: 0.7, 1e-2: 0.6, 1e-1: 0.55, 1.0: 0.9}  # accuracy by C, on any split
    monkeypatch.setattr(LogisticRegression, "score", lambda self, x, y: scripted[self.C])
    rng = np.random.default_rng(0)
    split = (rng.normal(size=(40, 3)), np.arange(40) % 2)
    stopped = analysis.linear_probe(split, split, split, cs=tuple(scripted), patience=2)
    assert (stopped["C"], stopped["C values tried"], stopped["test accuracy"]) == (1e-3, 4, 0.7)
    whole = analysis.linear_probe(split, split, split, cs=tuple(scripted), patience=5)
    assert (whole["C"], whole["C values tried"], whole["val accuracy"]) == (1.0, 5, 0.9)


def test_feature_sets_give_codes_pca_of_the_same_size_and_pixels():
    model = _tiny_model()
    classes = [str(i) for i in range(10)]
    train, val, test = (cu.ImageData(_images(n, seed=n), torch.arange(n) % 10, classes) for n in (100, 10, 12))
    sets = analysis.probe_features(model, train, val, test)
    assert list(sets) == ["codes", "PCA", "pixels"]
    for (a, b, c), width in zip(sets.values(), (64, 64, 3072)):
        assert a.shape == (100, width) and b.shape == (10, width) and c.shape == (12, width)
        assert a.shape[1] == b.shape[1] == c.shape[1]
    np.testing.assert_allclose(sets["codes"][2], cu.embed_images(model, test).numpy())
    pca = cu.fit_pca(train, 64)  # fit on the training split only, projected onto its 64 axes
    np.testing.assert_allclose(sets["PCA"][2], pca.transform(analysis.flat_pixels(test)), rtol=1e-4, atol=1e-4)
    assert sets["PCA"][0].var(0)[0] >= sets["PCA"][0].var(0)[-1]


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_2d_maps_have_one_point_per_image_and_keep_clusters_apart(method):
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 40)
    features = rng.normal(size=(80, 20)) + 20 * labels[:, None]
    points = analysis.embed_2d(features, method)
    assert points.shape == (80, 2)
    assert ch08.precision_at_k(points, labels, k=5) == 1.0


def test_2d_map_refuses_unknown_methods_and_too_few_points_for_tsne():
    with pytest.raises(cu.CourseError, match="'pca' or 'tsne'"):
        analysis.embed_2d(np.zeros((20, 3)), "umap")
    with pytest.raises(cu.CourseError, match="at least 10 points"):
        analysis.embed_2d(np.zeros((5, 3)), "tsne")


def test_tsne_points_follow_the_profile_and_stay_bounded():
    assert analysis.tsne_points(cu.PROFILES["smoke"]) == 512
    assert analysis.tsne_points(cu.PROFILES["laptop"]) == 2000
    assert analysis.tsne_points(cu.PROFILES["gpu"]) == analysis.TSNE_POINTS


# --------------------------------------------------------------------------- interpolation and random codes
def test_interpolation_endpoints_equal_the_inputs_and_steps_are_even():
    a, b = torch.rand(3, 8, 8), torch.rand(3, 8, 8)
    strip = ch08.interpolate(a, b, 8)
    assert strip.shape == (8, 3, 8, 8)
    assert torch.equal(strip[0], a) and torch.equal(strip[-1], b)
    torch.testing.assert_close(strip[1] - strip[0], (b - a) / 7)
    torch.testing.assert_close(strip[4] - strip[3], (b - a) / 7)


def test_interpolation_of_codes_blends_each_value_linearly():
    a, b = torch.tensor([0.0, 10.0, -4.0]), torch.tensor([7.0, 10.0, 4.0])
    strip = ch08.interpolate(a, b, 8)
    assert strip.shape == (8, 3)
    torch.testing.assert_close(strip[:, 0], torch.arange(8.0))  # 0, 1, ..., 7
    assert (strip[:, 1] == 10).all() and strip[4, 2] == pytest.approx(4 * 8 / 7 - 4)


def test_decoded_blends_of_codes_start_and_end_at_the_reconstructions():
    model = _tiny_model()
    a, b = _images(2)
    z = ch08.encode_images(model, torch.stack([a, b]))
    frames = ch08.decode_codes(model, ch08.interpolate(z[0], z[1], 8), (1, 8, 8))
    assert frames.shape == (8, 3, 32, 32) and 0 <= frames.min() and frames.max() <= 1
    recon = cu.reconstruct(model, torch.stack([a, b]))
    torch.testing.assert_close(frames[0], recon[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(frames[-1], recon[1], atol=1e-5, rtol=0)


def test_decode_codes_inverts_encode_images_through_the_decoder_batch_by_batch():
    model = _tiny_model(channels=1, size=28)
    images = _images(5, channels=1, size=28)
    codes = ch08.encode_images(model, images)
    code_shape = tuple(model.encode(cu.to_float(images[:1])).shape[1:])
    assert codes.shape == (5, int(np.prod(code_shape)))
    torch.testing.assert_close(ch08.decode_codes(model, codes, code_shape, batch_size=2), cu.reconstruct(model, images),
                               atol=1e-5, rtol=0)


def test_a_crossfade_departs_by_zero_and_a_changed_middle_by_its_share_of_the_ends_distance():
    a, b = torch.zeros(1, 2, 2), torch.ones(1, 2, 2)
    fade = ch08.interpolate(a, b, 5)
    assert analysis.crossfade_departure(fade) == pytest.approx(0.0, abs=1e-7)
    changed = fade.clone()
    changed[2] += 0.5  # the middle frame of three middle frames moves by half the ends' distance
    assert analysis.crossfade_departure(changed) == pytest.approx(0.5 / np.sqrt(3))
    with pytest.raises(cu.CourseError, match="at least 3 frames"):
        analysis.crossfade_departure(fade[:2])
    with pytest.raises(cu.CourseError, match="same image"):
        analysis.crossfade_departure(torch.zeros(4, 1, 2, 2))


def test_sampled_codes_have_the_fitted_mean_and_covariance():
    rng = torch.Generator().manual_seed(0)
    mix = torch.tensor([[2.0, 0.0, 0.0], [1.5, 0.5, 0.0], [0.0, 0.0, 0.1]])
    codes = torch.randn(4000, 3, generator=rng) @ mix.T + torch.tensor([5.0, -3.0, 1.0])
    samples = ch08.sample_codes(codes, 20000, seed=1)
    torch.testing.assert_close(samples.mean(0), codes.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), torch.cov(codes.T), atol=0.1, rtol=0.05)
    assert samples.shape == (20000, 3) and samples.dtype == torch.float32
    assert torch.equal(ch08.sample_codes(codes, 4, seed=3), ch08.sample_codes(codes, 4, seed=3))
    assert not torch.equal(ch08.sample_codes(codes, 4, seed=3), ch08.sample_codes(codes, 4, seed=4))
    flat = torch.cat([codes[:, :2], torch.full((4000, 1), 2.0)], dim=1)  # a value that never varies: no error
    assert torch.isfinite(ch08.sample_codes(flat, 10)).all()


def test_round_trip_change_is_small_for_codes_of_images_and_measures_the_move():
    model = _tiny_model(channels=1, size=28)
    images = _images(8, channels=1, size=28)
    codes = cu.embed_images(model, images)
    change = analysis.round_trip_change(model, codes, (1, 7, 7))
    again = cu.embed_images(model, cu.reconstruct(model, images))
    torch.testing.assert_close(change, (again - codes).norm(dim=1) / codes.norm(dim=1))
    assert change.shape == (8,) and (change >= 0).all()


# --------------------------------------------------------------------------- odd inputs
@pytest.mark.parametrize("channels,size", [(3, 32), (1, 28)])
def test_odd_images_have_the_data_shape_and_are_what_they_say(channels, size):
    images = analysis.odd_images(size, channels)
    assert list(images) == ["uniform noise", "one colour channel", "checkerboard", "colour gradient"]
    for image in images.values():
        assert image.shape == (channels, size, size) and image.dtype == torch.uint8
    board = images["checkerboard"].float() / 255
    assert set(board.unique().tolist()) == {0.0, 1.0} and board.mean() == 0.5
    assert (board[:, :, 1:] != board[:, :, :-1]).sum() == channels * size * 3  # 3 edges per row
    ramp = images["colour gradient"].float()
    assert (ramp[0, :, 1:] > ramp[0, :, :-1]).all()  # grows to the right: red (or the grey diagonal)
    assert (ramp[min(1, channels - 1), 1:] > ramp[min(1, channels - 1), :-1]).all()  # and downwards: green
    assert ramp.min() == 0 and ramp.max() == 255
    assert images["one colour channel"][0].eq(255).all()
    noise = images["uniform noise"].float() / 255
    assert 0.4 < noise.mean() < 0.6 and noise.std() > 0.25
    with pytest.raises(cu.CourseError, match="at least 4 pixels"):
        analysis.odd_images(2)


def test_nearest_code_distances_are_the_distance_to_the_closest_reference_code():
    reference = torch.tensor([[0.0, 0.0], [10.0, 0.0]])
    codes = torch.tensor([[3.0, 4.0], [10.0, 1.0], [0.0, 0.0]])
    distances = analysis.nearest_code_distances(codes, reference, batch_size=2)
    torch.testing.assert_close(distances, torch.tensor([5.0, 1.0, 0.0]))
    with pytest.raises(cu.CourseError, match="same length"):
        analysis.nearest_code_distances(torch.zeros(3, 4), reference)


# --------------------------------------------------------------------------- the chapter's models and figures
def test_chapter_model_trains_the_recommended_model_when_no_reference_is_installed(monkeypatch, capsys):
    monkeypatch.setattr(cu.pretrained, "has_pretrained", lambda name: False)
    data = cu.ImageData(_images(64, channels=1, size=28), torch.zeros(64, dtype=torch.int64), ["a"])
    model, how = analysis.chapter_model("fashion-mnist", data, cu.PROFILES["smoke"], device="cpu")
    assert how == "reference 'fashion-mnist-196' not present: trained in this profile's budget instead"
    printed = capsys.readouterr().out
    assert "fashion-mnist: trained recommended_autoencoder((1, 28, 28), 196, 'spatial') for 1 epoch(s)" in printed
    assert model.code_size == 196 and not model.training
    with pytest.raises(cu.CourseError, match="needs training images"):
        analysis.chapter_model("cifar10", None, cu.PROFILES["smoke"])


@pytest.mark.parametrize("dataset", list(analysis.REFERENCES))
def test_chapter_model_loads_the_installed_reference(dataset, capsys):
    name = analysis.REFERENCES[dataset]
    assert cu.has_pretrained(name), f"the reference {name} ships with the package"
    model, how = analysis.chapter_model(dataset, None, cu.PROFILES["smoke"])
    assert how.startswith(f"loaded reference {name!r}") and how[1:] in capsys.readouterr().out
    info = cu.pretrained_info(name)
    shape = (1, 28, 28) if dataset == "fashion-mnist" else (3, 32, 32)
    codes = cu.embed_images(model, _images(2, channels=shape[0], size=shape[1]))
    assert info["code_size"] == analysis.CODE_SIZES[dataset] == codes.shape[1]
    with pytest.raises(cu.CourseError, match="fashion-mnist, cifar10"):
        analysis.chapter_model("stl10", None, cu.PROFILES["smoke"])


def test_figures_label_their_rows_and_axes():
    fig = analysis.show_rows({"query and neighbours": _images(9), "other": _images(4)})
    assert [ax.get_ylabel() for ax in fig.axes] == ["query and neighbours", "other"]
    plt.close(fig)
    rng = np.random.default_rng(0)
    fig = analysis.plot_2d_maps({"PCA": rng.normal(size=(30, 2)), "t-SNE": rng.normal(size=(30, 2))},
                         np.arange(30) % 3, ["cat", "dog", "ship"])
    assert [ax.get_xlabel() for ax in fig.axes] == ["PCA axis 1", "t-SNE axis 1"]
    assert [t.get_text() for t in fig.axes[-1].get_legend().get_texts()] == ["cat", "dog", "ship"]
    plt.close(fig)


# --------------------------------------------------------------------------- the stored notebook
def test_stored_notebook_says_which_models_it_used_and_prints_both_tables():
    text = stored_outputs_text(json.loads(NOTEBOOK.read_text()))
    for name in analysis.REFERENCES.values():  # chapter_model says, for each dataset, which model it used
        assert f"reference {name!r}" in text.lower()
    assert "test accuracy" in text and "precision@10" in text


@pytest.mark.parametrize("cores, limited", [(2, True), (16, False)])
def test_one_thread_holds_the_loops_to_one_thread_only_on_small_machines(monkeypatch, cores, limited):
    from threadpoolctl import threadpool_info

    monkeypatch.setattr(analysis.os, "cpu_count", lambda: cores)
    before = [p["num_threads"] for p in threadpool_info()]
    with analysis.one_thread():
        inside = [p["num_threads"] for p in threadpool_info()]
    assert inside == ([1] * len(before) if limited else before)
