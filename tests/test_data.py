"""The data layer: resolution order, packs, integrity checks and the two ways to iterate."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import pickle
import shutil
import tarfile
import time
from pathlib import Path

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
    assert len(cu.load_dataset("fashion-mnist", "train", profile=cu.PROFILES["gpu"])) == 60_000  # all of it
    assert len(cu.load_dataset("fashion-mnist", "test", profile=cu.PROFILES["gpu"])) == 2_000  # the laptop's share


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


# --------------------------------------------------------------------------- your own pictures
def _photos() -> list:
    """Return the two real photos scikit-learn ships (a temple in China and a flower, 640x427 RGB, CC BY 2.0)."""
    import sklearn.datasets
    from PIL import Image
    folder = Path(sklearn.datasets.__file__).parent / "images"
    return [Image.open(folder / name).convert("RGB") for name in ("china.jpg", "flower.jpg")]


def _save(image, path, **kwargs):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def test_a_folder_of_20000_pictures_loads_exactly_and_reloads_from_its_cache_without_decoding(
        isolated_root, fashion_train, monkeypatch):
    from PIL import Image
    part = fashion_train.subset(20_000, seed=4)
    root = isolated_root.parent / "clothes"
    names = [c.replace("/", "-") for c in part.classes]
    for i, (image, label) in enumerate(zip(part.images[:, 0].numpy(), part.labels.tolist())):
        _save(Image.fromarray(image), root / names[label] / f"{i:05d}.png")
    started = time.perf_counter()
    first = cu.load_image_folder(root, image_size=28)  # 28x28 PNGs at 28: no resizing, pixels exact
    first_seconds = time.perf_counter() - started
    assert first.images.shape == (20_000, 1, 28, 28) and first.classes == sorted(names)
    order = sorted(range(20_000), key=lambda i: (names[int(part.labels[i])], i))  # class folder, then file name
    assert torch.equal(first.images, part.images[order])
    assert [first.classes[k] for k in first.labels.tolist()] == [names[int(part.labels[i])] for i in order]
    cached = cu.folders.folder_cache_path(root, image_size=28)
    assert cached.is_file() and cached.parent == isolated_root.parent / "cache" / "course_utils" / "folders"
    # The reload must come from the cache: no picture is opened again. (How fast that is depends on the machine:
    # chapter 09 measures and prints it; a timed assertion here would only test how busy the test machine is.)
    with monkeypatch.context() as m:
        m.setattr(Image, "open", lambda *a, **k: pytest.fail("a cached folder was decoded again"))
        again = cu.load_image_folder(root, image_size=28)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    print(f"first load {first_seconds:.1f} s (20,000 PNGs)")
    # any change to the folder gives a new key: one more picture is read, the stale pack is removed
    _save(Image.fromarray(part.images[0, 0].numpy()), root / names[0] / "extra.png")
    assert len(cu.load_image_folder(root, image_size=28)) == 20_001
    assert not cached.exists() and cu.folders.folder_cache_path(root, image_size=28).is_file()


def test_threads_and_one_reader_give_identical_images(tmp_path):
    china, flower = _photos()
    for i in range(24):
        _save((china if i % 2 else flower).crop((i * 7, i * 5, i * 7 + 90 + i, i * 5 + 70)), tmp_path / f"{i:02d}.jpg")
    one = cu.load_image_folder(tmp_path, image_size=32, cache=False, workers=1)
    many = cu.load_image_folder(tmp_path, image_size=32, cache=False, workers=3)
    assert torch.equal(one.images, many.images) and one.images.shape == (24, 3, 32, 32)


def test_image_size_resizes_the_shorter_side_and_crops_the_centre_like_torchvision(tmp_path):
    from torchvision.transforms import functional as TF
    china, _ = _photos()
    for size, box in [(32, (0, 0, 300, 200)), (64, (10, 0, 110, 427)), (48, (0, 0, 97, 97))]:
        crop = china.crop(box)
        path = _save(crop, tmp_path / f"{size}" / "photo.png")
        got = cu.load_image_folder(path.parent, image_size=size, cache=False).images[0]
        expected = torch.from_numpy(np.array(TF.center_crop(TF.resize(crop, size), [size, size]))).permute(2, 0, 1)
        assert torch.equal(got, expected)


def test_grey_rgba_palette_and_16_bit_pictures_are_converted(tmp_path):
    from PIL import Image
    china, flower = _photos()
    base = china.crop((100, 100, 164, 164))
    rgba = base.convert("RGBA")
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[:, :32] = 0  # left half fully transparent
    rgba.putalpha(Image.fromarray(alpha))
    _save(rgba, tmp_path / "colour" / "transparent.png")
    palette = base.quantize(64)  # mode "P": 64 colours
    _save(palette, tmp_path / "colour" / "palette.gif")
    data = cu.load_image_folder(tmp_path, image_size=64, cache=False)
    assert data.image_shape == (3, 64, 64)
    quantized, transparent = data.images  # palette.gif, transparent.png: files in name order
    assert (transparent[:, :, :32] == 255).all()  # transparent pixels became white, not black
    assert torch.equal(transparent[:, :, 32:], torch.from_numpy(np.array(base)).permute(2, 0, 1)[:, :, 32:])
    assert torch.equal(quantized, torch.from_numpy(np.array(palette.convert("RGB"))).permute(2, 0, 1))
    grey = tmp_path / "grey"
    deep = (np.asarray(base.convert("L")).astype(np.uint16) * 257)  # 16-bit grey, full range
    _save(Image.fromarray(deep), grey / "deep.png")
    _save(base.convert("L"), grey / "plain.png")
    both = cu.load_image_folder(grey, image_size=64, cache=False)
    assert both.image_shape == (1, 64, 64) and torch.equal(both.images[0], both.images[1])  # scaled, not clipped


def test_mixed_grey_and_colour_asks_to_choose_and_both_choices_work(tmp_path):
    china, _ = _photos()
    photo = china.crop((0, 0, 64, 64))
    _save(photo, tmp_path / "colour.png")
    _save(photo.convert("L"), tmp_path / "grey.png")
    with pytest.raises(cu.CourseError, match=r"mixes 1 grey and 1 colour pictures \(e\.g\. grey: grey\.png, colour: "
                                             r"colour\.png\).*channels=3.*channels=1"):
        cu.load_image_folder(tmp_path, image_size=64)
    colour = cu.load_image_folder(tmp_path, image_size=64, channels=3)
    assert colour.image_shape == (3, 64, 64)
    assert torch.equal(colour.images[1, 0], colour.images[1, 2])  # the grey picture, copied into R, G and B
    grey = cu.load_image_folder(tmp_path, image_size=64, channels=1)
    expected = torch.from_numpy(np.array(photo.convert("L")))
    assert grey.image_shape == (1, 64, 64) and torch.equal(grey.images[0, 0], expected)  # Pillow's own luma


def test_pictures_smaller_than_image_size_raise_or_are_skipped_or_upscaled_as_asked(tmp_path):
    china, _ = _photos()
    _save(china.crop((0, 0, 100, 80)), tmp_path / "big.png")
    _save(china.crop((0, 0, 50, 41)), tmp_path / "small.png")
    with pytest.raises(cu.CourseError, match=r"1 of 2 pictures in .* are smaller than image_size=64 on their shorter "
                                             r"side \(e\.g\. small\.png: 50x41; the smallest is 41 pixels\).*"
                                             r"image_size=40.*small='skip'.*small='upscale'"):
        cu.load_image_folder(tmp_path, image_size=64)
    with pytest.warns(UserWarning, match=r"Skipped 1 picture\(s\) .* smaller than image_size"):
        assert len(cu.load_image_folder(tmp_path, image_size=64, small="skip")) == 1
    assert cu.load_image_folder(tmp_path, image_size=64, small="upscale").images.shape == (2, 3, 64, 64)
    assert cu.load_image_folder(tmp_path, image_size=40).images.shape == (2, 3, 40, 40)  # the size it suggests


def test_a_folder_of_only_unreadable_files_says_what_they_may_be(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"<html>an error page saved as a .jpg</html>")
    (tmp_path / "b.png").write_bytes(b"")
    with pytest.raises(cu.CourseError, match=r"None of the 2 image files in .* could be read \(e\.g\. a\.jpg: .*\)\. "
                                             r"They may be unfinished downloads"):
        cu.load_image_folder(tmp_path)


def test_iphone_photos_get_a_hint(tmp_path):
    (tmp_path / "IMG_0001.HEIC").write_bytes(b"\x00" * 64)
    with pytest.raises(cu.DataNotFoundError, match=r"No images found.*\.heic/\.heif files.*pillow-heif"):
        cu.load_image_folder(tmp_path)


def test_phone_photos_are_turned_upright(tmp_path):
    from PIL import Image
    china, _ = _photos()
    upright = china.crop((0, 0, 120, 80))
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # what the camera wrote: sideways, 80x120
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    _save(stored, tmp_path / "sideways.png", exif=exif)
    table = cu.inspect_image_folder(tmp_path)
    assert (table.loc[0, "width"], table.loc[0, "height"]) == (120, 80)
    got = cu.load_image_folder(tmp_path, image_size=80, cache=False).images[0]
    from torchvision.transforms import functional as TF
    expected = torch.from_numpy(np.array(TF.center_crop(TF.resize(upright, 80), [80, 80]))).permute(2, 0, 1)
    assert torch.equal(got, expected)


def test_inspect_image_folder_lists_every_file_and_its_problem(tmp_path):
    china, flower = _photos()
    _save(china, tmp_path / "temples" / "china.jpg")
    _save(flower.convert("L").crop((0, 0, 40, 30)), tmp_path / "flowers" / "small.png")
    (tmp_path / "flowers" / "broken.jpg").write_bytes(b"not a jpeg")
    table = cu.inspect_image_folder(tmp_path, image_size=32)
    rows = table.set_index("file")
    assert list(table.columns) == ["file", "class", "format", "mode", "width", "height", "kind", "transparent",
                                   "problem"]
    assert rows.loc["temples/china.jpg", ["format", "mode", "width", "height", "kind"]].tolist() == \
        ["JPEG", "RGB", 640, 427, "colour"]
    assert rows.loc["flowers/small.png", "kind"] == "grey"
    assert rows.loc["flowers/small.png", "problem"] == "smaller than image_size=32"
    assert rows.loc["flowers/broken.jpg", "problem"].startswith("unreadable")


def test_a_link_that_loops_is_skipped_and_reported_and_a_linked_picture_loads(tmp_path, isolated_root):
    import os
    import warnings
    china, flower = _photos()
    root = tmp_path / "pictures"
    _save(china.crop((0, 0, 64, 64)), root / "cat" / "a.png")
    _save(flower.crop((0, 0, 64, 64)), root / "cat" / "b.png")
    os.symlink(root, root / "loop")  # followed blindly: pictures/loop/loop/... until [Errno 40]
    os.symlink(root / "cat", root / "cat" / "again")
    for attempt in ("first load", "from the cache"):
        with pytest.warns(UserWarning, match=r"Skipped 2 symbolic link\(s\) in .*pictures that loop .*e\.g\. "
                                             r"cat/again \(leads to .*cat, listed already\)") as caught:
            data = cu.load_image_folder(root, image_size=64)
        assert data.classes == ["cat"] and data.images.shape == (2, 3, 64, 64), attempt
        assert len([w for w in caught if "symbolic link" in str(w.message)]) == 1, attempt
    assert torch.equal(data.images[0], torch.from_numpy(np.array(china.crop((0, 0, 64, 64)))).permute(2, 0, 1))
    problems = cu.inspect_image_folder(root).set_index("file")["problem"]
    assert problems["loop"].startswith("skipped link (a link back to") and problems["cat/a.png"] == ""
    # a link to a picture is read like the picture; a folder linked in as a class is followed once
    elsewhere = tmp_path / "elsewhere"
    _save(china.crop((64, 0, 128, 64)), elsewhere / "dog.png")
    os.symlink(elsewhere / "dog.png", root / "cat" / "linked.png")
    os.symlink(elsewhere, root / "dogs")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the two loops, reported as above
        both = cu.load_image_folder(root, image_size=64, cache=False)
    assert both.classes == ["cat", "dogs"] and both.labels.tolist() == [0, 0, 0, 1]
    assert torch.equal(both.images[2], both.images[3])  # cat/linked.png and dogs/dog.png: one picture


def test_random_patches_are_crops_of_their_photo_and_repeat_with_the_seed(tmp_path):
    china, flower = _photos()
    _save(china.resize((90, 60)), tmp_path / "a.png")
    _save(flower.resize((70, 50)), tmp_path / "b.png")
    photos = cu.read_photos(tmp_path)
    assert list(photos) == ["a.png", "b.png"] and photos["a.png"].shape == (3, 60, 90)
    patches = cu.random_patches(photos, 16, per_photo=5, seed=3)
    assert patches.images.shape == (10, 3, 16, 16) and patches.labels.tolist() == [0] * 5 + [1] * 5
    assert patches.classes == ["a.png", "b.png"]
    for patch, label in zip(patches.images, patches.labels.tolist()):
        photo = list(photos.values())[label]
        windows = photo.unfold(1, 16, 1).unfold(2, 16, 1)  # every 16x16 window of the photo
        assert (windows == patch[:, None, None]).flatten(3).all(3).all(0).any()
    assert torch.equal(cu.random_patches(photos, 16, 5, seed=3).images, patches.images)
    assert not torch.equal(cu.random_patches(photos, 16, 5, seed=4).images, patches.images)
    assert cu.read_photos(tmp_path, max_side=45)["a.png"].shape == (3, 30, 45)
    with pytest.raises(cu.CourseError, match=r"1 photo\(s\) are smaller than a 55x55 patch \(e\.g\. b\.png: 70x50\)"):
        cu.random_patches(photos, 55, 1)


# --------------------------------------------------------------------------- STL-10 and Flowers-102 from a mirror
def _real_squares(n: int, size: int, seed: int = 0) -> np.ndarray:
    """Return ``n`` real photo crops of ``size`` x ``size`` (uint8 NHWC), cut from scikit-learn's two photos."""
    rng = np.random.default_rng(seed)
    photos = [np.asarray(p) for p in _photos()]
    out = []
    for i in range(n):
        photo = photos[i % 2]
        top, left = rng.integers(0, photo.shape[0] - size), rng.integers(0, photo.shape[1] - size)
        out.append(photo[top:top + size, left:left + size])
    return np.stack(out)


def _tar_gz(path, members: dict) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def test_stl10_through_torchvision_from_a_local_mirror(isolated_root, tmp_path, monkeypatch, serve_folder):
    # STL-10's binary format: uint8 images (N, 3, 96, 96) stored column-major, labels 1..10 one byte each.
    train, test, unlabeled = _real_squares(6, 96, seed=1), _real_squares(4, 96, seed=2), _real_squares(2, 96, seed=3)
    train_y, test_y = np.array([1, 2, 3, 10, 5, 6], np.uint8), np.array([10, 1, 4, 7], np.uint8)
    column_major = lambda x: np.ascontiguousarray(x.transpose(0, 3, 2, 1)).tobytes()  # NHWC => N, C, W, H
    classes = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
    files = {"train_X.bin": column_major(train), "train_y.bin": train_y.tobytes(),
             "unlabeled_X.bin": column_major(unlabeled), "test_X.bin": column_major(test),
             "test_y.bin": test_y.tobytes(), "class_names.txt": "\n".join(classes).encode(),
             "fold_indices.txt": b"0 1 2\n3 4 5\n"}
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    tgz_md5 = _tar_gz(mirror / "stl10_binary.tar.gz", {f"stl10_binary/{k}": v for k, v in files.items()})
    md5 = {k: hashlib.md5(v).hexdigest() for k, v in files.items()}
    cls = torchvision.datasets.STL10
    monkeypatch.setattr(cls, "url", serve_folder(mirror) + "stl10_binary.tar.gz")
    monkeypatch.setattr(cls, "tgz_md5", tgz_md5)
    monkeypatch.setattr(cls, "train_list", [[k, md5[k]] for k in ("train_X.bin", "train_y.bin", "unlabeled_X.bin")])
    monkeypatch.setattr(cls, "test_list", [[k, md5[k]] for k in ("test_X.bin", "test_y.bin")])
    for split, images, labels in (("train", train, train_y), ("test", test, test_y)):
        data = cu.load_dataset("stl10", split)
        assert data.images.shape == (len(images), 3, 96, 96) and data.classes == classes
        assert torch.equal(data.images, torch.from_numpy(images).permute(0, 3, 1, 2))  # upright, not transposed
        assert data.labels.tolist() == (labels.astype(int) - 1).tolist()
        assert (isolated_root / "stl10" / f"{split}.npz").is_file()
    small = cu.load_dataset("stl10", "test", image_size=32)  # the anothertechs tutorial's size
    assert small.images.shape == (4, 3, 32, 32)
    assert torch.equal(small.images, cu.resize_images(torch.from_numpy(test).permute(0, 3, 1, 2), 32))


def test_flowers102_through_torchvision_from_a_local_mirror(isolated_root, tmp_path, monkeypatch, serve_folder):
    import scipy.io
    from PIL import Image
    from torchvision.transforms import functional as TF
    china, flower = _photos()
    # real photos of varied shapes; the last is large enough for the JPEG decoder to shrink it on the way
    boxes = [(0, 0, 200, 150), (50, 20, 170, 230), (10, 10, 110, 110), (300, 100, 500, 250), (0, 0, 180, 120),
             (100, 0, 260, 200), (200, 200, 400, 380), (0, 0, 640, 427)]
    jpgs = {}
    for i, box in enumerate(boxes, start=1):
        buffer = io.BytesIO()
        (china if i % 2 else flower).crop(box).save(buffer, "JPEG", quality=90)
        jpgs[f"jpg/image_{i:05d}.jpg"] = buffer.getvalue()
    labels = np.array([[3, 1, 102, 7, 3, 50, 1, 9]])  # 1-based, one per image, as in imagelabels.mat
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    scipy.io.savemat(mirror / "imagelabels.mat", {"labels": labels})
    scipy.io.savemat(mirror / "setid.mat", {"trnid": np.array([[1, 3, 5]]), "valid": np.array([[2, 8]]),
                                            "tstid": np.array([[4, 6, 7]])})
    tgz_md5 = _tar_gz(mirror / "102flowers.tgz", jpgs)
    md5 = lambda name: hashlib.md5((mirror / name).read_bytes()).hexdigest()
    cls = torchvision.datasets.Flowers102
    monkeypatch.setattr(cls, "_download_url_prefix", serve_folder(mirror))
    monkeypatch.setattr(cls, "_file_dict", {"image": ("102flowers.tgz", tgz_md5),
                                            "label": ("imagelabels.mat", md5("imagelabels.mat")),
                                            "setid": ("setid.mat", md5("setid.mat"))})
    for split, ids in (("train", [1, 3, 5]), ("val", [2, 8]), ("test", [4, 6, 7])):
        data = cu.load_dataset("flowers102", split)
        assert data.images.shape == (len(ids), 3, 64, 64) and data.images.dtype == torch.uint8
        assert data.labels.tolist() == [int(labels[0, i - 1]) - 1 for i in ids]
        assert len(data.classes) == 102 and data.classes[0] == "pink primrose"
        assert (isolated_root / "flowers102" / f"{split}.npz").is_file()
        for got, i in zip(data.images, ids):  # shorter side to 64, centre 64x64, as torchvision would
            photo = Image.open(io.BytesIO(jpgs[f"jpg/image_{i:05d}.jpg"])).convert("RGB")
            expected = torch.from_numpy(np.array(TF.center_crop(TF.resize(photo, 64), [64, 64]))).permute(2, 0, 1)
            difference = (got.float() - expected.float()).abs().mean()
            assert difference == 0 if min(photo.size) < 256 else difference < 2.0  # large JPEGs: decoded at 1/2 scale
