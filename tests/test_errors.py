"""Every learner mistake in docs/troubleshooting.md raises one clear error that says how to fix it."""
from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

import course_utils as cu
from course_utils import data as data_module


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(cu.CourseError, match="Unknown dataset 'mnist'. Known datasets: fashion-mnist, cifar10, "
                                             "stl10, flowers102; for your own pictures use load_image_folder"):
        cu.load_dataset("mnist")


def test_unknown_split_lists_the_splits():
    with pytest.raises(cu.CourseError, match="'cifar10' has no split 'validation'; choose one of train, test"):
        cu.load_dataset("CIFAR-10", "validation")


def test_data_dir_that_does_not_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(cu.DataNotFoundError, match="COURSE_DATA_DIR points at .*nowhere, which does not exist"):
        cu.load_dataset("cifar10", "test")


def test_data_dir_that_is_a_file(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "file"))
    with pytest.raises(cu.CourseError, match="which is a file, not a folder"):
        cu.load_dataset("cifar10", "test")


def test_data_dir_that_cannot_be_read(tmp_path, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0)
    monkeypatch.setenv("COURSE_DATA_DIR", str(locked))
    real_access = os.access
    # root reads any folder whatever its mode, so emulate an ordinary user's view of a mode-000 folder
    monkeypatch.setattr(data_module.os, "access",
                        lambda p, mode: False if str(p) == str(locked) else real_access(p, mode))
    with pytest.raises(cu.CourseError, match=r"cannot read\. Fix its permissions \(chmod u\+rx"):
        cu.load_dataset("cifar10", "test")


def test_image_folder_without_images(tmp_path):
    (tmp_path / "cats").mkdir()
    (tmp_path / "cats" / "notes.txt").write_text("no pictures here")
    with pytest.raises(cu.DataNotFoundError, match="No images found in .*one sub-folder per class"):
        cu.load_image_folder(tmp_path)


def test_image_folder_that_does_not_exist(tmp_path):
    with pytest.raises(cu.DataNotFoundError, match="does not exist"):
        cu.load_image_folder(tmp_path / "missing")


def _real_images_folder(root, fashion_test, n=6):
    for i in range(n):
        cls = root / fashion_test.classes[int(fashion_test.labels[i])].replace("/", "-")
        cls.mkdir(parents=True, exist_ok=True)
        Image.fromarray(fashion_test.images[i, 0].numpy()).save(cls / f"{i}.png")


def test_image_folder_skips_unreadable_files_and_counts_them(tmp_path, fashion_test, isolated_root):
    folder = tmp_path / "pictures"
    _real_images_folder(folder, fashion_test)
    broken = next(folder.iterdir()) / "broken.jpg"
    broken.write_bytes(b"this is not a jpeg")
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable file\(s\) in .*broken\.jpg"):
        data = cu.load_image_folder(folder, image_size=28)  # grey 28x28 pictures: one channel
    assert data.images.shape == (6, 1, 28, 28) and len(data.classes) == len(set(data.labels.tolist()))
    with pytest.warns(UserWarning, match=r"Skipped 1 unreadable file\(s\)"):  # said again when read from the cache
        cu.load_image_folder(folder, image_size=28)
    with pytest.raises(cu.CourseError, match="Cannot read image .*broken.jpg"):
        cu.load_image_folder(folder, image_size=28, on_error="raise", cache=False)


def test_image_size_not_divisible_by_the_total_stride():
    with pytest.raises(cu.CourseError, match="Image size 30 is not divisible by the encoder's total stride 8 "
                                             r"\(3 downsampling stages\).*multiple of 8 \(e\.g\. 32"):
        cu.ConvAutoencoder(image_size=30, widths=(16, 32, 64))


def test_wrong_image_size_is_caught_before_training(fashion_test):
    with pytest.raises(cu.CourseError, match=r"PaperspaceAutoencoder takes 3-channel images \(RGB colour\), but "
                                             r"the data has 1 channel\(s\) \(grey\)"):
        cu.fit(cu.PaperspaceAutoencoder(), fashion_test.subset(256), epochs=1, progress=False)
    model = cu.ConvAutoencoder(32, 1, (8, 16), 8)
    with pytest.raises(cu.CourseError, match=r"takes images of 1x32x32, got a batch of \(1, 1, 28, 28\)"):
        cu.fit(model, fashion_test.subset(256), epochs=1, progress=False)


@pytest.mark.parametrize("kwargs, fragment", [
    ({"latent": 0}, "latent must be positive"),
    ({"latent": -5}, "latent must be positive"),
    ({"widths": (16, 0)}, "widths must be positive"),
])
def test_latent_or_width_not_positive(kwargs, fragment):
    with pytest.raises(cu.CourseError, match=fragment):
        cu.ConvAutoencoder(32, 3, **{"widths": (16, 32), **kwargs})


def test_batch_larger_than_the_dataset(fashion_test):
    with pytest.raises(cu.CourseError, match=r"Batch size 512 is larger than the dataset \(100 images\)\. "
                                             "Use a batch size of at most 100"):
        cu.fit(cu.KapilshAutoencoder(), fashion_test.subset(100), batch_size=512, progress=False)


def test_unknown_profile(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "fast")
    with pytest.raises(cu.CourseError, match="Unknown profile 'fast'. Known profiles: smoke, laptop, gpu"):
        cu.get_profile()


def test_nan_loss_stops_with_the_step_and_a_fix(fashion_test):
    torch.manual_seed(0)
    model = cu.ConvAutoencoder(28, 1, (8, 16), 16, output_activation=None)
    with pytest.raises(cu.TrainingDivergedError, match=r"The training loss became (nan|inf) at step \d+ "
                                                       r"\(epoch 1, batch \d+ of 8\)\. Lower the learning rate"):
        cu.fit(model, fashion_test.subset(1024), epochs=1, batch_size=128, lr=1e6, optimizer="sgd",
               schedule=None, progress=False)


def test_a_learning_rate_off_by_a_typo_warns_that_the_model_learned_nothing(fashion_test):
    import re
    import warnings
    train = fashion_test.subset(1024)
    pixels = cu.to_float(train.images)
    mean_image_mse = float(((pixels - pixels.mean(0)) ** 2).mean())
    torch.manual_seed(0)
    with pytest.warns(cu.LearnedNothingWarning, match=r"learned nothing.*lr=5000\b.*too few steps") as caught:
        history = cu.fit(cu.recommended_autoencoder((1, 28, 28)), train, epochs=1, batch_size=16, lr=5e3,
                         progress=False)  # 5e3 for 5e-3: the sigmoid saturates, the loss stays flat, nothing diverges
    final, baseline = (float(v) for v in re.search(r"at the end \(([\d.]+), .* no better than ([\d.]+), the loss of "
                                                   r"always predicting the mean", str(caught[0].message)).groups())
    assert final == pytest.approx(sum(history.step_losses[-16:]) / 16, rel=1e-3)  # the last quarter of 64 steps
    assert baseline == pytest.approx(mean_image_mse, rel=1e-3) and final > baseline
    # learned; stopped before a full epoch; too few steps to judge (8: a smoke run's first epoch)
    for kwargs in ({"lr": 5e-3}, {"lr": 5e3, "stop_after_steps": 40}, {"lr": 5e3, "batch_size": 128}):
        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("error", cu.LearnedNothingWarning)
            cu.fit(cu.recommended_autoencoder((1, 28, 28)), train, epochs=1, progress=False,
                   **{"batch_size": 16, **kwargs})


def test_checkpoint_from_a_different_architecture(tmp_path):
    cu.save_checkpoint(tmp_path / "wide.pt", cu.ConvAutoencoder(32, 3, (16, 32), 64))
    with pytest.raises(cu.CheckpointError) as narrow:
        cu.load_checkpoint(tmp_path / "wide.pt", cu.ConvAutoencoder(32, 3, (8, 32), 64))
    message = str(narrow.value)
    assert "(ConvAutoencoder) than ConvAutoencoder" not in message  # the class alone does not say what differs
    assert "different architecture (both ConvAutoencoder, of other sizes): encoder.0.weight: saved (16, 3, 3, 3), " \
           "this model (8, 3, 3, 3); encoder.2.weight: saved (32, 16, 3, 3), this model (32, 8, 3, 3)" in message
    assert "encoder.0.bias" not in message and message.count("saved (") == 3  # a few differences, one per layer
    assert "same code size, widths" in message and "new checkpoint path" in message
    with pytest.raises(cu.CheckpointError, match=r"different architecture \(both ConvAutoencoder, of other sizes\): "
                       r"bottleneck\.encode\.1\.weight: saved \(64, 2048\), this model \(16, 2048\)"):
        cu.load_checkpoint(tmp_path / "wide.pt", cu.ConvAutoencoder(32, 3, (16, 32), 16))  # another code size
    with pytest.raises(cu.CheckpointError, match=r"\(saved: ConvAutoencoder, this model: KapilshAutoencoder\): "
                       r"encoder\.0\.weight: saved \(16, 3, 3, 3\), this model \(16, 1, 3, 3\).*\(and \d+ more\)"):
        cu.load_checkpoint(tmp_path / "wide.pt", cu.KapilshAutoencoder())


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(cu.CheckpointError, match=r"No checkpoint at .*absent\.pt\. Train first with fit"):
        cu.load_checkpoint(tmp_path / "absent.pt", cu.KapilshAutoencoder())


def test_damaged_checkpoint_file(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(cu.CheckpointError, match="cannot be read"):
        cu.load_checkpoint(tmp_path / "bad.pt", cu.KapilshAutoencoder())


@pytest.mark.parametrize("call, fragment", [
    (lambda: cu.ConvEncoder(3, (8,), activation="swish"), "Unknown activation 'swish'"),
    (lambda: cu.ConvEncoder(3, (8,), downsample="avg"), "downsample must be 'pool' or 'stride'"),
    (lambda: cu.ConvDecoder(3, (8,), upsample="pixelshuffle"), "upsample must be 'transposed', 'nearest'"),
    (lambda: cu.ConvAutoencoder(32, 3, (8,), 4, bottleneck="conv"), "bottleneck must be 'flat' or 'spatial'"),
])
def test_unknown_building_block_names(call, fragment):
    with pytest.raises(cu.CourseError, match=fragment):
        call()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"optimizer": "rmsprop"}, "Unknown optimizer 'rmsprop'"),
    ({"schedule": "step"}, "Unknown schedule 'step'"),
    ({"loss": "huber"}, "Unknown loss 'huber'"),
    ({"lr": -1.0}, "learning rate must be a positive number"),
    ({"epochs": 0}, "epochs must be positive"),
])
def test_unknown_training_settings(fashion_test, kwargs, fragment):
    with pytest.raises(cu.CourseError, match=fragment):
        cu.fit(cu.KapilshAutoencoder(), fashion_test.subset(256), progress=False, **kwargs)
