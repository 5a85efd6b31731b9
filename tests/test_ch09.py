"""Chapter 09: the learner's folder reader, Dataset, splits and 100-value model (generated module), and the
chapter's plumbing (the sample-photo folder, the image-size table, optional datasets, the anothertechs cost)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

import course_utils as cu
from course_utils.chapters import _ch09_materials as ch09
from course_utils.chapters.ch09_your_own_images import (Code100Autoencoder, PictureFolder, center_square, hold_out,
                                                        read_image_folder, split_train_val)


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


def test_hold_out_sets_whole_photos_aside():
    photos = {name: torch.zeros(3, 40, 40, dtype=torch.uint8) for name in ("a.png", "coffee.png", "flower.jpg")}
    train, test = hold_out(photos, list(ch09.TEST_PHOTOS))
    assert list(train) == ["a.png"] and list(test) == ["coffee.png", "flower.jpg"]
    with pytest.raises(KeyError, match="b.png"):
        hold_out(photos, ["b.png"])


def test_split_train_val_is_a_seeded_partition():
    train, val = split_train_val(100, 0.2, seed=3)
    assert len(val) == 20 and len(train) == 80
    assert sorted(torch.cat([train, val]).tolist()) == list(range(100))  # every index once, on one side
    again, _ = split_train_val(100, 0.2, seed=3)
    other, _ = split_train_val(100, 0.2, seed=4)
    assert torch.equal(train, again) and not torch.equal(train, other)


def test_the_learners_reader_and_dataset_match_torchvision_and_the_package_on_real_photos(tmp_path, isolated_root):
    from PIL import Image
    from torchvision import transforms
    folder = ch09.sample_photo_folder(tmp_path / "mine")
    images, labels, classes = read_image_folder(folder, 48)
    assert images.shape == (13, 3, 48, 48) and images.dtype == torch.uint8
    assert classes == ["colour", "grey"] and torch.bincount(labels).tolist() == [8, 5]
    dataset = PictureFolder(folder, 48)
    assert len(dataset) == 13 and torch.equal(torch.stack([dataset[i] for i in range(13)]), images)
    rocket = Image.open(folder / "colour" / "rocket.jpg").convert("RGB")  # 640x427: a crop on both sides
    for size in (32, 64, 96):
        square = center_square(rocket, size)
        reference = transforms.CenterCrop(size)(transforms.Resize(size)(rocket))
        assert square.size == (size, size) and np.array_equal(np.asarray(square), np.asarray(reference))
    loaded = cu.load_image_folder(folder, 48, channels=3)
    assert torch.equal(loaded.labels, labels)
    png = torch.tensor([p.suffix == ".png" for p in dataset.files])
    assert int(png.sum()) == 8 and torch.equal(loaded.images[png], images[png])  # PNG: the same pixels
    jpeg = (loaded.images[~png].float() - images[~png].float()).abs()
    assert 0 < jpeg.mean() < 3  # JPEG: the package decodes at a reduced scale first, a small difference


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


def test_the_code100_model_is_chapter_01s_blocks_around_100_values_with_2000_times_fewer_parameters():
    from course_utils.chapters.ch01_feature_extractors import Decoder, Encoder
    small = Code100Autoencoder()
    assert isinstance(small.encoder, Encoder) and isinstance(small.decoder, Decoder)
    with torch.device("meta"):  # 263M parameters described, not allocated
        big = cu.AnothertechsAutoencoder()
    assert cu.count_parameters(big) == 263_018_231 and cu.count_parameters(small) == 121_727
    assert 2000 < cu.count_parameters(big) / cu.count_parameters(small) < 2300
    x = torch.rand(2, 3, 32, 32)
    assert small.encode(x).shape == (2, 100) and small(x).shape == (2, 3, 32, 32)
    with torch.no_grad():
        assert 0 < float(small(x).min()) and float(small(x).max()) < 1  # the decoder's sigmoid
    assert cu.code_size(small, torch.zeros(1, 3, 32, 32, dtype=torch.uint8)) == 100 == big.code_size
    memory = ch09.training_memory(big)
    assert memory["AdamW state MB"] == 2 * memory["weights MB"] and memory["training memory MB"] > 4000


def test_seconds_per_step_and_the_steps_a_budget_affords(cifar_test):
    data = cifar_test.subset(64)
    seconds = ch09.seconds_per_step(Code100Autoencoder(), data, 16, steps=2)
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


def test_take_keeps_the_labels_of_the_chosen_images(cifar_test):
    part = cifar_test.subset(10, seed=0)
    train, val = split_train_val(len(part), 0.3, seed=0)
    chosen = ch09.take(part, val, "validation")
    assert len(chosen) == 3 and chosen.split == "validation" and chosen.classes == part.classes
    assert torch.equal(chosen.images, part.images[val]) and torch.equal(chosen.labels, part.labels[val])
