"""The data layer: resolution order, packs, integrity checks and the two ways to iterate."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import shutil
import tarfile

import numpy as np
import pytest
import torch
import torchvision

import course_utils as cu
from course_utils import data as data_module
from conftest import FASHION_DIR, needs_cifar, needs_fashion


# --------------------------------------------------------------------------- resolution order
def test_step1_pack_in_data_root_wins(isolated_root, fashion_test):
    first = fashion_test.subset(100)
    cu.write_pack(isolated_root / "fashion-mnist" / "test.npz",
                  first.images.permute(0, 2, 3, 1).numpy(), first.labels.numpy(), first.classes)
    loaded = cu.load_dataset("fashion-mnist", "test")
    assert len(loaded) == 100  # the pack, not the 10,000-image system copy
    assert torch.equal(loaded.images, first.images) and torch.equal(loaded.labels, first.labels)


@needs_fashion
def test_step2_system_copy_then_pack_is_written(isolated_root, monkeypatch):
    data = cu.load_dataset("fashion-mnist", "test")
    assert data.images.shape == (10_000, 1, 28, 28) and data.images.dtype == torch.uint8
    assert data.labels.dtype == torch.int64 and set(data.labels.tolist()) == set(range(10))
    assert data.classes[0] == "T-shirt/top" and len(data.classes) == 10
    assert abs(data.images.float().mean().item() / 255 - 0.2868) < 0.002  # test-split mean of Fashion-MNIST
    pack = isolated_root / "fashion-mnist" / "test.npz"
    assert pack.is_file()
    monkeypatch.setattr(data_module, "SYSTEM_FASHION_MNIST_DIR", FASHION_DIR.parent / "absent")
    again = cu.load_dataset("fashion-mnist", "test")  # now only the pack can serve it
    assert torch.equal(again.images, data.images) and torch.equal(again.labels, data.labels)


@needs_fashion
def test_step3_torchvision_download_from_a_local_mirror(isolated_root, tmp_path, monkeypatch, serve_folder):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    resources = []
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz",
                 "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(FASHION_DIR / name, mirror / name)
        resources.append((name, hashlib.md5((mirror / name).read_bytes()).hexdigest()))
    monkeypatch.setattr(data_module, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-copy")
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "resources", resources)
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [serve_folder(mirror)])
    data = cu.load_dataset("fashion-mnist", "test")  # torchvision's own downloader, local files
    assert data.images.shape == (10_000, 1, 28, 28)
    assert (isolated_root / "fashion-mnist" / "raw").is_dir()
    assert (isolated_root / "fashion-mnist" / "test.npz").is_file()


@needs_cifar
def test_step3_cifar10_through_torchvision_from_a_local_mirror(isolated_root, tmp_path, monkeypatch,
                                                                 serve_folder, cifar_test):
    # Rebuild the python-format archive torchvision expects from 500 real test images.
    part = cifar_test.subset(500, seed=5)
    batch = {"data": part.images.flatten(1).numpy(), "labels": part.labels.tolist()}
    meta = {"label_names": part.classes}
    members = {"cifar-10-batches-py/test_batch": pickle.dumps(batch),
               "cifar-10-batches-py/batches.meta": pickle.dumps(meta)}
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    with tarfile.open(mirror / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    md5 = {name.split("/")[-1]: hashlib.md5(p).hexdigest() for name, p in members.items()}
    cls = torchvision.datasets.CIFAR10
    monkeypatch.setattr(cls, "url", serve_folder(mirror) + "cifar-10-python.tar.gz")
    monkeypatch.setattr(cls, "tgz_md5", hashlib.md5((mirror / "cifar-10-python.tar.gz").read_bytes()).hexdigest())
    monkeypatch.setattr(cls, "train_list", [])
    monkeypatch.setattr(cls, "test_list", [["test_batch", md5["test_batch"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": md5["batches.meta"]})
    data = cu.load_dataset("cifar10", "test")
    assert torch.equal(data.images, part.images) and torch.equal(data.labels, part.labels)
    assert data.classes == part.classes
    assert torch.equal(cu.read_pack(isolated_root / "cifar10" / "test.npz").images, part.images)


def test_offline_error_names_the_three_remedies(isolated_root, tmp_path, monkeypatch):
    monkeypatch.setattr(data_module, "SYSTEM_FASHION_MNIST_DIR", tmp_path / "no-system-copy")
    monkeypatch.setattr(torchvision.datasets.FashionMNIST, "mirrors", [(tmp_path / "offline").as_uri() + "/"])
    with pytest.raises(cu.DataNotFoundError) as err:
        cu.load_dataset("fashion-mnist", "test")
    message = str(err.value)
    assert "No local copy of fashion-mnist/test" in message
    assert "1. putting a pack at" in message and str(isolated_root) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "3. connecting to the internet" in message


@needs_cifar
def test_cifar_pack_loads_as_nchw_uint8(monkeypatch):
    from conftest import CIFAR_DIR
    monkeypatch.setenv("COURSE_DATA_DIR", str(CIFAR_DIR))
    data = cu.load_dataset("cifar10", "test")
    assert data.images.shape == (10_000, 3, 32, 32) and data.images.dtype == torch.uint8
    assert data.classes[:2] == ["airplane", "automobile"]
    assert torch.bincount(data.labels).tolist() == [1000] * 10


@needs_cifar
def test_image_size_resizes_with_antialiasing(cifar_test):
    small = cu.resize_images(cifar_test.images[:16], 16)
    assert small.shape == (16, 3, 16, 16) and small.dtype == torch.uint8
    pooled = torch.nn.functional.avg_pool2d(cifar_test.images[:16].float(), 2)
    naive = cifar_test.images[:16, :, ::2, ::2].float()  # plain subsampling aliases
    assert (small.float() - pooled).abs().mean() < 0.6 * (naive - pooled).abs().mean()


def test_read_only_data_root_sends_new_packs_to_the_user_cache(tmp_path, monkeypatch, fashion_test):
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o555)
    monkeypatch.setenv("COURSE_DATA_DIR", str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cu.load_dataset("fashion-mnist", "test")
    assert (tmp_path / "cache" / "course_utils" / "fashion-mnist" / "test.npz").is_file()
    assert not any(root.iterdir())


# --------------------------------------------------------------------------- packs
def test_pack_round_trip_is_exact(tmp_path, fashion_test):
    part = fashion_test.subset(500, seed=3)
    path = cu.write_pack(tmp_path / "p" / "test.npz", part.images.permute(0, 2, 3, 1).numpy(),
                         part.labels.numpy(), part.classes)
    back = cu.read_pack(path)
    assert torch.equal(back.images, part.images) and torch.equal(back.labels, part.labels)
    assert back.classes == part.classes
    assert not list(path.parent.glob("*.tmp"))  # the temporary file was renamed, not left behind


def test_truncated_pack_raises_naming_the_file(tmp_path, fashion_test):
    part = fashion_test.subset(200)
    path = cu.write_pack(tmp_path / "test.npz", part.images.permute(0, 2, 3, 1).numpy(), part.labels.numpy(),
                         part.classes)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(cu.CorruptPackError, match=r"test\.npz is truncated or corrupt.*Delete it"):
        cu.read_pack(path)


def test_flipped_bytes_fail_the_integrity_check(tmp_path, fashion_test):
    part = fashion_test.subset(200)
    path = cu.write_pack(tmp_path / "test.npz", part.images.permute(0, 2, 3, 1).numpy(), part.labels.numpy(),
                         part.classes)
    raw = bytearray(path.read_bytes())
    raw[2000] ^= 0xFF  # inside the images array
    path.write_bytes(bytes(raw))
    with pytest.raises(cu.CorruptPackError, match="test.npz"):
        cu.read_pack(path)


def test_checksum_mismatch_is_caught_even_with_a_valid_zip(tmp_path, fashion_test):
    part = fashion_test.subset(50)
    good = cu.write_pack(tmp_path / "good.npz", part.images.permute(0, 2, 3, 1).numpy(), part.labels.numpy(),
                         part.classes)
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = arrays["images"].copy()
    arrays["images"][0, 0, 0, 0] ^= 1  # a one-bit change the zip's own CRC cannot see (it is recomputed)
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(cu.CorruptPackError, match="shape/checksum check"):
        cu.read_pack(tmp_path / "bad.npz")


@pytest.mark.parametrize("images, labels, fragment", [
    (np.zeros((4, 8, 8, 3), np.float32), np.zeros(4, np.int64), "dtype float32"),
    (np.zeros((4, 3, 8, 8), np.uint8), np.zeros(4, np.int64), "expected uint8 \\(N, H, W, C\\)"),
    (np.zeros((4, 8, 8, 3), np.uint8), np.zeros(5, np.int64), "labels of dtype int64 and shape \\(5,\\)"),
])
def test_pack_with_wrong_dtype_or_shape_is_rejected(tmp_path, images, labels, fragment):
    np.savez(tmp_path / "odd.npz", images=images, labels=labels, classes=np.array(["a"]))
    with pytest.raises(cu.CorruptPackError, match=fragment):
        cu.read_pack(tmp_path / "odd.npz")


def test_pack_missing_an_array_is_rejected(tmp_path):
    np.savez(tmp_path / "half.npz", images=np.zeros((2, 4, 4, 1), np.uint8))
    with pytest.raises(cu.CorruptPackError, match=r"lacks the array\(s\) \['classes', 'labels'\]"):
        cu.read_pack(tmp_path / "half.npz")


# --------------------------------------------------------------------------- iteration
def _indexed(data: cu.ImageData) -> cu.ImageData:
    return cu.ImageData(data.images, torch.arange(len(data)), data.classes)


def test_device_batches_shapes_dtypes_and_ranges(fashion_test):
    part = fashion_test.subset(1000)
    for value_range in [(0.0, 1.0), (-1.0, 1.0)]:
        batches = cu.DeviceBatches(part, 128, value_range=value_range, with_labels=True)
        got = list(batches)
        assert len(got) == len(batches) == 8
        x, y = got[0]
        assert x.shape == (128, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert got[-1][0].shape[0] == 1000 - 7 * 128
        all_x = torch.cat([b[0] for b in got])
        assert all_x.min() == value_range[0] and all_x.max() == value_range[1]
    x = next(iter(cu.DeviceBatches(part, 64, shuffle=False)))
    assert torch.equal(x, part.images[:64].float() / 255)


def test_shuffling_visits_every_sample_once_per_epoch(fashion_test):
    part = _indexed(fashion_test.subset(1000))
    batches = cu.DeviceBatches(part, 100, with_labels=True, seed=7)
    epochs = [torch.cat([y for _, y in batches]) for _ in range(3)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(1000))
    assert not torch.equal(epochs[0], epochs[1])
    replay = cu.DeviceBatches(part, 100, with_labels=True, seed=7)
    assert torch.equal(torch.cat([y for _, y in replay.batches(1)]), epochs[1])  # epoch 1 replays exactly
    tail = torch.cat([y for _, y in replay.batches(1, start=4)])
    assert torch.equal(tail, epochs[1][400:])


def test_drop_last_drops_the_ragged_batch(fashion_test):
    batches = cu.DeviceBatches(fashion_test.subset(1000), 128, drop_last=True)
    assert len(batches) == 7 and all(x.shape[0] == 128 for x in batches)


def test_channels_last_batches(fashion_test):
    x = next(iter(cu.DeviceBatches(fashion_test.subset(256), 32, channels_last=True)))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_standard_dataset_and_dataloader(fashion_test):
    from torchvision import transforms
    part = fashion_test.subset(64)
    tensors = cu.ImageDataset(part)
    x, y = tensors[3]
    assert x.shape == (1, 28, 28) and torch.equal(x, part.images[3].float() / 255) and y == int(part.labels[3])
    pil = cu.ImageDataset(part, transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]),
                          as_pil=True)
    loader = torch.utils.data.DataLoader(pil, batch_size=16)
    xb, yb = next(iter(loader))
    assert xb.shape == (16, 1, 28, 28) and torch.allclose(xb, part.images[:16].float() / 127.5 - 1, atol=1e-6)


def test_subset_is_reproducible_and_bounded(fashion_test):
    a, b = fashion_test.subset(300, seed=1), fashion_test.subset(300, seed=1)
    assert torch.equal(a.images, b.images) and len(a) == 300
    assert fashion_test.subset(None) is fashion_test and fashion_test.subset(10**6) is fashion_test


def test_to_uint8_inverts_to_float(fashion_test):
    images = fashion_test.images[:32]
    for value_range in [(0.0, 1.0), (-1.0, 1.0)]:
        assert torch.equal(cu.to_uint8(cu.to_float(images, value_range), value_range), images)


def test_to_float_scales_uint8_once_and_passes_float_through(fashion_test):
    images = fashion_test.images[:8]
    assert torch.equal(cu.to_float(images), images.float() / 255)
    scaled = cu.to_float(images)
    again = cu.to_float(scaled)
    assert again is scaled and torch.equal(again, images.float() / 255)  # not scaled twice, not modified
    assert cu.to_float(scaled.double()).dtype == torch.float32


@needs_fashion
def test_load_dataset_takes_the_profiles_share_of_each_split(isolated_root, fashion_test, fashion_train):
    smoke = cu.get_profile("smoke")
    train = cu.load_dataset("fashion-mnist", "train", profile=smoke)
    assert len(train) == smoke.train_images == 1024
    assert torch.equal(train.images, fashion_train.subset(1024, seed=0).images)
    test = cu.load_dataset("fashion-mnist", "test", profile=smoke)
    assert len(test) == smoke.test_images == 512 and (test.name, test.split) == ("fashion-mnist", "test")
    assert torch.equal(test.images, fashion_test.subset(512, seed=0).images)  # the same images every time
    assert torch.equal(cu.load_dataset("fashion-mnist", "test", profile=smoke).labels, test.labels)
    train_sized = dataclasses.replace(smoke, train_images=100)
    assert len(cu.load_dataset("fashion-mnist", "test", profile=train_sized)) == 512  # a test split: test size
    small = cu.load_dataset("fashion-mnist", "test", profile=smoke, image_size=14)
    assert small.images.shape == (512, 1, 14, 14)
    assert len(cu.load_dataset("fashion-mnist", "test", profile=cu.PROFILES["gpu"])) == 10_000  # all of it


def test_validation_split_is_fixed_disjoint_and_documented(fashion_test):
    rest, val = cu.validation_split(fashion_test)
    assert (len(rest), len(val)) == (10_000 - 2_000, 2_000)  # at most a fifth of a small split
    assert val.split == "test/validation" and val.name == "fashion-mnist"
    rest2, val2 = cu.validation_split(fashion_test)
    assert torch.equal(val.images, val2.images) and torch.equal(rest.labels, rest2.labels)  # the same every time
    joined = torch.cat([rest.images, val.images]).flatten(1)
    assert torch.unique(joined, dim=0).shape[0] == torch.unique(fashion_test.images.flatten(1), dim=0).shape[0]
    _, other = cu.validation_split(fashion_test, seed=1)
    assert not torch.equal(other.images, val.images)
    big_rest, big_val = cu.validation_split(cu.ImageData(fashion_test.images.repeat(6, 1, 1, 1),
                                                         fashion_test.labels.repeat(6), fashion_test.classes))
    assert len(big_val) == cu.data.VALIDATION_IMAGES == 5_000 and len(big_rest) == 55_000
    with pytest.raises(cu.CourseError, match="Can hold out between 1 and"):
        fashion_test.split_off(0)
