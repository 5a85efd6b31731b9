"""Chapter 09's helpers: the sample-photo folder, the image-size table, optional datasets, the anothertechs cost."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import course_utils as cu
from course_utils.chapters import ch09_your_own_images as ch09


def test_the_sample_photo_folder_is_real_readable_photos_with_a_licence_each(tmp_path, isolated_root):
    folder = ch09.sample_photo_folder(tmp_path / "mine")
    table = cu.inspect_image_folder(folder, image_size=96)
    assert len(table) == len(ch09.SAMPLE_PHOTOS) == 13 and (table["problem"] == "").all()
    assert sorted(table.loc[table["kind"] == "grey", "file"].str.split("/").str[1]) == sorted(ch09.GREY_PHOTOS)
    assert (table.loc[table["class"] == "colour", "kind"] == "colour").all()
    assert min(table["width"].min(), table["height"].min()) >= 300  # large photos, room for patches
    credits = ch09.photo_credits()
    assert credits["licence and credit"].str.contains("public domain|CC0|CC BY 2.0|no known copyright").all()
    data = cu.load_image_folder(folder, image_size=32, channels=3)
    assert data.classes == ["colour", "grey"] and torch.bincount(data.labels).tolist() == [8, 5]
    flat = cu.load_image_folder(ch09.sample_photo_folder(tmp_path / "flat", layout="flat"), 32, channels=1)
    assert flat.image_shape == (1, 32, 32) and flat.classes == ["flat"] and len(flat) == 13
    with pytest.raises(cu.CourseError, match="layout must be 'classes' or 'flat'"):
        ch09.sample_photo_folder(tmp_path / "x", layout="nested")


def test_split_photos_holds_out_whole_photos():
    photos = {name: torch.zeros(3, 40, 40, dtype=torch.uint8) for name in ("a.png", "coffee.png", "flower.jpg")}
    train, test = ch09.split_photos(photos)
    assert list(train) == ["a.png"] and list(test) == ["coffee.png", "flower.jpg"]
    with pytest.raises(cu.CourseError, match=r"Held-out photo\(s\) \['b.png'\]"):
        ch09.split_photos(photos, ("b.png",))


def test_size_table_matches_the_models_it_describes():
    table = ch09.size_table()
    assert table["encoder stages"].tolist() == [2, 3, 4]  # 32 => 8, 64 => 8, 96 => 6
    assert table["map entering the code"].tolist() == ["64x8x8", "128x8x8", "256x6x6"]
    assert table["code size (ratio kept)"].tolist() == [256, 1024, 2304]
    assert (table["input values"] / table["code size (ratio kept)"] == ch09.COMPRESSION).all()
    assert table["code-256 compression ratio"].tolist() == [12.0, 48.0, 108.0]
    for size in ch09.SIZES:
        model = ch09.size_model(size)
        assert table.loc[size, "parameters (ratio kept)"] == cu.count_parameters(model)
        assert table.loc[size, "AdamW training memory MB"] == pytest.approx(cu.count_parameters(model) * 16 / 2**20)
    assert table["activations MB per image"].is_monotonic_increasing
    assert table["training MFLOPs per image"].is_monotonic_increasing


def test_activation_values_counts_every_layer_output():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 8 * 8, 10))
    assert ch09.activation_values(model, (3, 8, 8)) == 4 * 64 + 4 * 64 + 4 * 64 + 10


def test_the_code100_model_keeps_100_values_with_about_a_thousand_times_fewer_parameters():
    small = ch09.code100_model()
    with torch.device("meta"):  # 263M parameters described, not allocated
        big = cu.AnothertechsAutoencoder()
    assert cu.count_parameters(big) == 263_018_231
    assert 700 < cu.count_parameters(big) / cu.count_parameters(small) < 1400
    assert small(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32)
    assert cu.code_size(small, torch.zeros(1, 3, 32, 32, dtype=torch.uint8)) == 100 == big.code_size
    memory = ch09.training_memory(big)
    assert memory["AdamW state MB"] == 2 * memory["weights MB"] and memory["training memory MB"] > 4000


def test_seconds_per_step_and_the_steps_a_budget_affords(cifar_test):
    data = cifar_test.subset(64)
    seconds = ch09.seconds_per_step(ch09.code100_model(), data, 16, steps=2)
    assert 0 < seconds < 30
    assert ch09.steps_affordable(10, 3.0) == 3 and ch09.steps_affordable(1, 3.0) == 1
    with pytest.raises(cu.CourseError, match="seconds_each must be positive"):
        ch09.steps_affordable(10, 0)


def test_optional_dataset_returns_none_and_says_how_to_get_it(isolated_root, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torchvision.datasets.STL10, "url", (tmp_path / "offline").as_uri() + "/stl10_binary.tar.gz")
    assert ch09.optional_dataset("stl10", "test") is None
    said = capsys.readouterr().out
    assert "stl10/test is not available here (no local copy, and the download failed: URLError)" in said
    assert "downloads 2.6 GB" in said and "COURSE_DATA_DIR" in said
    images = np.zeros((3, 96, 96, 3), np.uint8)
    cu.write_pack(isolated_root / "stl10" / "test.npz", images, np.arange(3), [f"c{i}" for i in range(10)])
    data = ch09.optional_dataset("stl10", "test", image_size=32)
    assert data.images.shape == (3, 3, 32, 32)


def test_write_png_folder_round_trips_through_load_image_folder(tmp_path, isolated_root, cifar_test):
    part = cifar_test.subset(40, seed=1)
    folder = ch09.write_png_folder(part, tmp_path / "png")
    back = cu.load_image_folder(folder, image_size=32)
    order = sorted(range(40), key=lambda i: (part.classes[int(part.labels[i])], i))
    assert torch.equal(back.images, part.images[order]) and ch09.png_folder_order(part).tolist() == order
