"""Learner workflows around fit: train longer, bad checkpoint paths, a full disk, Ctrl-C, wrong channels."""
import os
from pathlib import Path

import pytest
import torch

import course_utils as cu
from course_utils import training
from course_utils.chapters import _ch03_comparison as ch03_comparison
from course_utils.chapters import _ch04_analysis as ch04

from conftest import needs_cifar, needs_fashion

OPTIONS = dict(batch_size=64, lr=1e-3, device="cpu", progress=False)


@pytest.fixture(scope="module")
def small(fashion_test) -> cu.ImageData:
    return fashion_test.subset(256)


def test_resume_with_more_epochs_fails_before_any_work_and_says_how_to_train_longer(tmp_path, small):
    path = tmp_path / "run.pt"
    model = cu.KapilshAutoencoder()
    cu.fit(model, small, epochs=2, checkpoint=path, **OPTIONS)
    before = path.stat().st_mtime_ns
    with pytest.raises(cu.CourseError, match=r"changes epochs 2 -> 4.*To train longer, start a new run from its "
                                             r"weights: cu.load_checkpoint"):
        cu.fit(cu.KapilshAutoencoder(), small, epochs=4, checkpoint=path, resume=True, **OPTIONS)
    assert path.stat().st_mtime_ns == before  # nothing was trained or written
    # the advice works: a new run from the saved weights, with its own schedule
    again = cu.KapilshAutoencoder()
    cu.load_checkpoint(path, again)
    history = cu.fit(again, small, epochs=2, checkpoint=tmp_path / "longer.pt", **OPTIONS)
    assert len(history) == 2


def test_without_a_schedule_resume_can_extend_the_run(tmp_path, small):
    path = tmp_path / "run.pt"
    cu.fit(cu.KapilshAutoencoder(), small, epochs=1, schedule=None, checkpoint=path, **OPTIONS)
    history = cu.fit(cu.KapilshAutoencoder(), small, epochs=3, schedule=None, checkpoint=path, resume=True, **OPTIONS)
    assert history["epoch"] == [1, 2, 3]


@pytest.mark.parametrize("make_path", ["file_in_the_way", "folder_given"])
def test_a_checkpoint_path_that_cannot_be_written_fails_before_training(tmp_path, small, make_path, monkeypatch):
    if make_path == "file_in_the_way":
        (tmp_path / "results").write_text("not a folder")
        path, message = tmp_path / "results" / "ck.pt", r"results is a file, not a folder"
    else:
        path, message = tmp_path, r"is a folder; give a file path in it"
    steps = []
    monkeypatch.setattr(training.TrainStep, "__call__", lambda self, x, target=None: steps.append(1))
    with pytest.raises(cu.CheckpointError, match=message):
        cu.fit(cu.KapilshAutoencoder(), small, epochs=1, checkpoint=path, **OPTIONS)
    assert steps == []  # not one step was spent


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere: permissions cannot be tested as root")
def test_an_unwritable_folder_fails_before_training(tmp_path, small):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(cu.CheckpointError, match="is not writable by this user"):
            cu.fit(cu.KapilshAutoencoder(), small, epochs=1, checkpoint=locked / "ck.pt", **OPTIONS)
    finally:
        locked.chmod(0o700)


def test_an_unwritable_folder_is_reported(tmp_path, monkeypatch):
    """The same check as root: the temporary probe file cannot be created (as on a read-only mount)."""
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(training.tempfile, "TemporaryFile", refuse)
    with pytest.raises(cu.CheckpointError, match=r"is not writable by this user \(Permission denied\)"):
        training.check_checkpoint_path(tmp_path / "ck.pt")


def test_a_full_disk_says_so_and_keeps_the_previous_checkpoint(tmp_path, small, monkeypatch):
    path = tmp_path / "run.pt"
    model = cu.KapilshAutoencoder()
    cu.fit(model, small, epochs=1, checkpoint=path, **OPTIONS)
    good = path.read_bytes()

    real_save = torch.save

    def save_on_a_full_disk(obj, f, *args, **kwargs):
        f.write(b"x" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")  # what torch says

    monkeypatch.setattr(training.torch, "save", save_on_a_full_disk)
    usage = training.shutil.disk_usage(tmp_path)
    monkeypatch.setattr(training.shutil, "disk_usage", lambda p: usage._replace(free=4096))
    with pytest.raises(cu.CheckpointError, match=r"The disk holding .* is full \(0.0 MiB free.*The previous "
                                                 r"checkpoint at .*run.pt is intact"):
        cu.save_checkpoint(path, model)
    monkeypatch.setattr(training.torch, "save", real_save)
    assert path.read_bytes() == good
    assert not list(tmp_path.glob(".*.tmp"))  # the half-written temporary file is gone
    cu.load_checkpoint(path, cu.KapilshAutoencoder())


def test_other_save_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def broken(obj, f, *args, **kwargs):
        raise RuntimeError("something else")
    monkeypatch.setattr(training.torch, "save", broken)
    with pytest.raises(RuntimeError, match="something else"):
        cu.save_checkpoint(tmp_path / "ck.pt", cu.KapilshAutoencoder())


def test_ctrl_c_says_where_the_last_checkpoint_is_and_resume_works(tmp_path, small):
    path = tmp_path / "run.pt"
    calls = []

    def interrupt_at_step_7(x):
        calls.append(1)
        if len(calls) == 7:
            raise KeyboardInterrupt
        return x

    with pytest.raises(KeyboardInterrupt, match=r"The last checkpoint after step 5 is at .*run.pt: call fit "
                                                r"again with the same arguments and resume=True"):
        cu.fit(cu.KapilshAutoencoder(), small, epochs=2, checkpoint=path, checkpoint_every=5,
               input_transform=interrupt_at_step_7, **OPTIONS)
    history = cu.fit(cu.KapilshAutoencoder(), small, epochs=2, checkpoint=path, checkpoint_every=5, resume=True,
                     **OPTIONS)
    assert history["epoch"] == [1, 2]
    with pytest.raises(KeyboardInterrupt, match="Nothing was saved: pass checkpoint="):
        cu.fit(cu.KapilshAutoencoder(), small, epochs=1, input_transform=lambda x: (_ for _ in ()).throw(
            KeyboardInterrupt), **OPTIONS)


@needs_fashion
def test_rgb_model_on_grey_images_names_the_channels(small):
    with pytest.raises(cu.CourseError, match=r"takes 3-channel images \(RGB colour\), but the data has 1 "
                                             r"channel\(s\) \(grey\).*images.repeat\(1, 3, 1, 1\)"):
        cu.fit(cu.recommended_autoencoder((3, 28, 28), 196), small, epochs=1, **OPTIONS)


@needs_cifar
def test_evaluating_on_the_wrong_dataset_gives_fits_clear_error(cifar_test):
    """A Fashion-MNIST model scored on CIFAR-10: the same message as fit, not a convolution's shape error."""
    for score in (cu.evaluate, cu.reconstruct):
        with pytest.raises(cu.CourseError, match=r"KapilshAutoencoder takes 1-channel images \(grey\), but the "
                                                 r"data has 3 channel\(s\) \(RGB colour\)"):
            score(cu.KapilshAutoencoder(), cifar_test.subset(8))


def test_the_gpu_profile_on_a_machine_without_a_gpu_warns_with_the_cost(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match=r"no CUDA GPU.*for 4 epochs: about 4x the laptop profile's work, i\.e\. up "
                                         r"to about 21 minutes per notebook on a CPU.*COURSE_PROFILE=laptop"):
        profile = cu.get_profile("gpu")
    assert profile.name == "gpu"  # a warning, not a refusal: the learner may mean it


def _sample_photos() -> list[Path]:
    """Return real photos shipped inside scikit-learn (a Chinese temple and a flower, 427x640)."""
    import sklearn.datasets
    return sorted((Path(sklearn.datasets.__file__).parent / "images").glob("*.jpg"))


def test_a_flat_folder_of_photos_loads_as_one_class(tmp_path, isolated_root):
    photos = _sample_photos()
    folder = tmp_path / "holiday"
    folder.mkdir()
    for p in photos:
        (folder / p.name).write_bytes(p.read_bytes())
    data = cu.load_image_folder(folder, image_size=32)
    assert data.images.shape == (len(photos), 3, 32, 32) and data.classes == ["holiday"]
    (folder / "beach").mkdir()  # now with a class sub-folder, the loose photos are ignored, with a warning
    (folder / "beach" / photos[0].name).write_bytes(photos[0].read_bytes())
    with pytest.warns(UserWarning, match=r"Ignored 2 picture\(s\) directly in .*holiday"):
        data = cu.load_image_folder(folder, image_size=32)
    assert len(data) == 1 and data.classes == ["beach"]


@pytest.mark.parametrize("check, message", [
    (lambda: cu.conv_transpose_output_size(7, 5, 2, 9, 0), r"padding=9 crops more than .* use a smaller padding"),
    (lambda: cu.conv_transpose_output_size(7, 5, 2, 2, 3), r"output_padding must be .* smaller than the stride \(2\)"),
    (lambda: cu.conv_output_size(3, 7, 1, 0), r"A 7x7 kernel does not fit in 3 pixels with padding 0"),
    (lambda: ch04.compression_table((3, 32, 32), [0]), r"Code sizes must be positive"),
    (lambda: cu.layer_table(cu.KapilshAutoencoder(), (3, 28, 28)),
     r"KapilshAutoencoder cannot take an input of shape \(3, 28, 28\).*\(channels, height, width\)"),
    (lambda: cu.transposed_padding(0, stride=3), r"use kernel_size >= stride"),
    (lambda: ch03_comparison.grid_contrast(torch.ones(24, 24), period=3, border=60), r"at least 2 periods wide"),
    (lambda: ch04.spatial_code_size(0, 64), r"must be positive"),
], ids=["transposed-padding-too-big", "output-padding-too-big", "kernel-larger-than-input", "code-size-0",
        "layer-table-wrong-channels", "padding-kernel-0", "grid-border-too-wide", "spatial-code-0"])
def test_exercise_checks_called_with_a_wrong_answer_explain_themselves(check, message):
    """The exercises' self-check calls, given a wrong or impossible answer: one clear message, not a traceback."""
    with pytest.raises(cu.CourseError, match=message):
        check()


def test_exercise_formulas_still_agree_with_pytorch_on_valid_layers():
    for size, k, s, p, op in [(7, 5, 2, 2, 1), (7, 4, 2, 1, 0), (7, 3, 2, 1, 1), (14, 2, 2, 0, 0)]:
        layer = torch.nn.ConvTranspose2d(1, 1, k, s, p, op)
        assert cu.conv_transpose_output_size(size, k, s, p, op) == layer(torch.zeros(1, 1, size, size)).shape[-1]


def test_the_same_checks_guard_the_dataloader_path(tmp_path, small):
    """fit with a standard DataLoader of float batches: bad path, wrong channels and Ctrl-C behave alike."""
    from torch.utils.data import DataLoader
    loader = DataLoader(cu.ImageDataset(small), batch_size=64)
    (tmp_path / "results").write_text("not a folder")
    with pytest.raises(cu.CheckpointError, match="results is a file, not a folder"):
        cu.fit(cu.KapilshAutoencoder(), loader, epochs=1, checkpoint=tmp_path / "results" / "ck.pt", **{
            k: v for k, v in OPTIONS.items() if k != "batch_size"})
    with pytest.raises(cu.CourseError, match=r"takes 3-channel images"):
        cu.fit(cu.PaperspaceAutoencoder(), loader, epochs=1, device="cpu", progress=False)
    with pytest.raises(KeyboardInterrupt, match=r"No checkpoint was written yet at .*ck.pt"):
        cu.fit(cu.KapilshAutoencoder(), loader, epochs=1, checkpoint=tmp_path / "ck.pt", device="cpu",
               progress=False, input_transform=lambda x: (_ for _ in ()).throw(KeyboardInterrupt))


def test_packs_and_checkpoints_are_readable_by_others_as_with_open(tmp_path):
    """An instructor fills a shared data folder: files get 0666 less the umask, not a temporary file's 0600."""
    import numpy as np
    old = os.umask(0o022)
    try:
        pack = cu.write_pack(tmp_path / "cifar10" / "test.npz", np.zeros((2, 4, 4, 3), np.uint8),
                             np.zeros(2, np.int64), ["a"])
        ckpt = cu.save_checkpoint(tmp_path / "run.pt", cu.KapilshAutoencoder())
    finally:
        os.umask(old)
    assert pack.stat().st_mode & 0o777 == 0o644 and ckpt.stat().st_mode & 0o777 == 0o644
