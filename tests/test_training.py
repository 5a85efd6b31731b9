"""fit: it learns, it is reproducible, it saves atomically and resumes exactly where it stopped."""
from __future__ import annotations

import inspect
import platform
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import course_utils as cu
from course_utils.chapters._ch04_analysis import code_shape


def small_model() -> cu.ConvAutoencoder:
    torch.manual_seed(0)
    return cu.ConvAutoencoder(28, 1, (16, 32), latent=32)


@pytest.fixture(scope="module")
def train_part(fashion_test):
    return fashion_test.subset(2048, seed=1)


def test_fit_lowers_the_loss_on_real_images(train_part, fashion_test):
    held_out = cu.ImageData(fashion_test.images[-500:], fashion_test.labels[-500:], fashion_test.classes)
    model = small_model()
    before = cu.evaluate(model, held_out)["mse"]
    history = cu.fit(model, train_part, held_out, epochs=3, batch_size=64, lr=3e-3, progress=False)
    after = cu.evaluate(model, held_out)
    assert len(history) == 3 and history["epoch"] == [1, 2, 3]
    assert history["train_loss"][-1] < 0.5 * history["train_loss"][0]
    assert after["mse"] < 0.5 * before and after["psnr"] > 12 and 0 < after["ssim"] <= 1
    assert history.last["val_mse"] == pytest.approx(after["mse"], rel=1e-4)
    assert history.last["images_per_second"] > 0 and len(history.step_losses) == 3 * 32
    assert list(history.frame().columns[:3]) == ["epoch", "train_loss", "seconds"]


def test_same_seed_gives_an_identical_loss_history(train_part):
    runs = [cu.fit(small_model(), train_part, epochs=2, batch_size=128, seed=5, progress=False) for _ in range(2)]
    assert runs[0].step_losses == runs[1].step_losses
    other = cu.fit(small_model(), train_part, epochs=2, batch_size=128, seed=6, progress=False)
    assert other.step_losses != runs[0].step_losses  # the seed really drives the batch order


def test_fit_accepts_a_standard_dataloader(train_part):
    loader = torch.utils.data.DataLoader(cu.ImageDataset(train_part), batch_size=128, shuffle=True)
    history = cu.fit(small_model(), loader, epochs=2, progress=False)
    assert history["train_loss"][1] < history["train_loss"][0]


def test_flip_half_mirrors_the_first_half_only(cifar_test):
    batch = cu.to_float(cifar_test.images[:9])
    kept = batch.clone()
    flipped = cu.flip_half(batch)
    assert torch.equal(batch, kept)  # the input is not changed in place
    assert torch.equal(flipped[:4], kept[:4].flip(-1)) and torch.equal(flipped[4:], kept[4:])
    assert not torch.equal(flipped[:4], kept[:4])  # real photos are not mirror-symmetric
    assert torch.equal(cu.flip_half(batch[:1]), batch[:1])


def test_augment_changes_input_and_target_alike(cifar_test):
    """fit(augment=...) trains on the augmented batch: the model sees it and the loss compares with it."""
    part = cifar_test.subset(256)

    def first_step(augment):
        seen = []
        torch.manual_seed(0)
        model = cu.ConvAutoencoder(32, 3, (8, 16), latent=16)
        model.register_forward_hook(lambda m, i, o: seen.append((i[0].detach().clone(), o.detach().clone())))
        history = cu.fit(model, part, epochs=1, batch_size=64, augment=augment, amp=False, channels_last=False,
                         progress=False, stop_after_steps=1)
        return seen[-1], history.step_losses[0]  # the last forward: fit first checks the model fits

    (plain, _), _ = first_step(None)
    (inputs, out), loss = first_step(cu.flip_half)
    assert torch.equal(inputs[:32], plain[:32].flip(-1)) and torch.equal(inputs[32:], plain[32:])
    assert loss == pytest.approx(float(torch.nn.functional.mse_loss(out, inputs)), rel=1e-5)


def test_paperspace_replica_trains_in_minus_one_to_one(cifar_test):
    model = cu.PaperspaceAutoencoder()
    part = cifar_test.subset(512)
    history = cu.fit(model, part, epochs=2, batch_size=64, lr=1e-3, progress=False)
    assert history.records[0]["train_loss"] > history.records[1]["train_loss"]
    recon = cu.reconstruct(model, part.images[:8])
    assert recon.shape == (8, 3, 32, 32) and recon.min() >= 0 and recon.max() <= 1


def test_checkpoint_round_trip_with_weights_only(tmp_path, train_part):
    model = small_model()
    cu.fit(model, train_part, epochs=1, batch_size=256, checkpoint=tmp_path / "run.pt", progress=False)
    payload = torch.load(tmp_path / "run.pt", weights_only=True)
    assert payload["format"] == 1 and payload["epoch"] == 1 and payload["step"] == 8
    assert set(payload) >= {"model", "optimizer", "scheduler", "rng", "config", "history"}
    assert payload["config"]["batch_size"] == 256
    fresh = small_model()
    for p in fresh.parameters():
        p.data.zero_()
    cu.load_checkpoint(tmp_path / "run.pt", fresh)
    for a, b in zip(model.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("stop_after", [5, 16, 21])  # mid-epoch, at an epoch boundary, mid-epoch later
def test_resume_continues_from_the_same_step(tmp_path, train_part, stop_after):
    reference = cu.fit(small_model(), train_part, epochs=3, batch_size=256, seed=3, progress=False)
    ckpt = tmp_path / "run.pt"
    cu.fit(small_model(), train_part, epochs=3, batch_size=256, seed=3, checkpoint=ckpt, checkpoint_every=1,
           stop_after_steps=stop_after, progress=False)
    assert torch.load(ckpt, weights_only=True)["step"] == stop_after
    resumed = cu.fit(small_model(), train_part, epochs=3, batch_size=256, seed=3, checkpoint=ckpt,
                     checkpoint_every=1, resume=True, progress=False)
    assert resumed.step_losses == reference.step_losses  # exact: same order, same states
    assert resumed["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-6)


def test_stale_temporary_files_are_cleaned_up(tmp_path, train_part):
    (tmp_path / ".run.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    cu.fit(small_model(), train_part.subset(512), epochs=1, batch_size=256, checkpoint=tmp_path / "run.pt",
           progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]


def test_profile_is_chosen_by_environment(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    assert cu.get_profile().name == "smoke" and cu.get_profile().train_images == 1024
    monkeypatch.setenv("COURSE_PROFILE", "LAPTOP")
    assert cu.get_profile().name == "laptop"
    monkeypatch.delenv("COURSE_PROFILE")
    assert cu.get_profile().name == ("gpu" if torch.cuda.is_available() else "laptop")
    assert cu.get_profile("smoke").take(60_000) == 1024 and cu.PROFILES["gpu"].take(60_000) == 60_000
    assert "profile=smoke" in cu.describe_setup(cu.get_profile("smoke"), torch.device("cpu"))


def test_start_chapter_seeds_prints_and_returns_profile_and_device(monkeypatch, capsys):
    monkeypatch.setenv("COURSE_PROFILE", "smoke")
    profile, device = cu.start_chapter(seed=3)
    first = torch.rand(3)
    assert profile.name == "smoke" and device == cu.get_device()
    assert capsys.readouterr().out.startswith("profile=smoke")
    cu.start_chapter(seed=3)
    assert torch.equal(torch.rand(3), first)  # seeded


def test_profiles_hold_the_chapter_knobs():
    sizes = {name: (p.sweep_share, p.images_per_repeat, p.timing_repeats) for name, p in cu.PROFILES.items()}
    assert sizes == {"smoke": (0.5, 256, 1), "laptop": (0.5, 1024, 5), "gpu": (1.0, 16384, 3)}
    assert all(p.name == name for name, p in cu.PROFILES.items())
    knobs = {name: (p.one_class_cifar_classes, p.budget_seconds) for name, p in cu.PROFILES.items()}
    assert knobs == {"smoke": (2, 3.0), "laptop": (10, 45.0), "gpu": (10, 45.0)}  # chapters 07 and 09


def test_seed_everything_repeats_random_draws():
    cu.seed_everything(11)
    a = torch.rand(3), np.random.rand(), random.random()
    cu.seed_everything(11)
    b = torch.rand(3), np.random.rand(), random.random()
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


def test_pca_baseline_improves_with_components(fashion_test):
    train, test = fashion_test.subset(3000, seed=1), cu.ImageData(fashion_test.images[-500:],
                                                                 fashion_test.labels[-500:], fashion_test.classes)
    small, large = cu.pca_baseline(train, test, 16), cu.pca_baseline(train, test, 196)
    assert large["mse"] < small["mse"] and large["explained_variance"] > small["explained_variance"]
    assert large["psnr"] == pytest.approx(cu.psnr_from_mse(large["mse"]))
    assert 0.002 < large["mse"] < 0.008  # PCA-196 on Fashion-MNIST scores about 0.004


def test_per_image_errors_and_embeddings(train_part):
    model = small_model()
    errors = cu.per_image_errors(model, train_part.images[:50])
    recon = cu.reconstruct(model, train_part.images[:50])
    assert errors.shape == (50,)
    assert errors.mean().item() == pytest.approx(((recon - train_part.images[:50] / 255) ** 2).mean().item(), rel=1e-5)
    assert cu.embed_images(model, train_part.images[:50]).shape == (50, 32)


def test_fit_classifier_learns_fashion_mnist(fashion_test):
    train = fashion_test.subset(3000, seed=4)
    test = cu.ImageData(fashion_test.images[-1000:], fashion_test.labels[-1000:], fashion_test.classes)
    torch.manual_seed(0)
    model = cu.ConvClassifier(1, 10, (8, 16))
    untrained = cu.accuracy(model, test)
    history = cu.fit_classifier(model, train, test, epochs=2, batch_size=100, lr=5e-3, progress=False)
    assert untrained < 0.3 and history.last["test_accuracy"] > 0.6
    assert history.last["test_accuracy"] == cu.accuracy(model, test)


def test_cpu_name_reads_the_model_name():
    cpuinfo = Path("/proc/cpuinfo")
    names = re.findall(r"^model name\s*:\s*(.+?)\s*$", cpuinfo.read_text(), re.M) if cpuinfo.is_file() else []
    if names:
        assert cu.cpu_name() == names[0]  # the first processor's line, exactly
    else:
        assert cu.cpu_name() == (platform.processor() or platform.machine() or "CPU")


def test_evaluation_helpers_restore_the_training_mode_even_on_an_error(fashion_test):
    class Broken(cu.ConvAutoencoder):
        def forward(self, x):
            assert not self.training, "evaluation runs in eval mode"
            raise RuntimeError("broken forward")

        def encode(self, x):
            return self.forward(x)

    model = Broken(28, 1, (8, 16), 8).train()
    images = fashion_test.images[:4]
    calls = [lambda: cu.evaluate(model, images), lambda: cu.reconstruct(model, images),
             lambda: cu.embed_images(model, images), lambda: cu.code_size(model, images),
             lambda: cu.layer_table(model, (1, 28, 28)), lambda: cu.feature_maps(model, cu.to_float(images)),
             lambda: code_shape(model, (1, 28, 28))]
    for call in calls:  # some helpers first check the model fits the images, and say so in a CourseError
        with pytest.raises((RuntimeError, cu.CourseError), match="broken forward"):
            call()
        assert model.training


@pytest.mark.filterwarnings("ignore::course_utils.LearnedNothingWarning")  # the lr=1e-4 run learns too little, on purpose
def test_a_recipe_trains_exactly_like_the_same_settings_by_name(train_part):
    recipe = cu.Recipe(**cu.RECOMMENDED_TRAINING, epochs=1)
    by_recipe = cu.fit(small_model(), train_part, None, recipe, device="cpu", progress=False)
    by_name = cu.fit(small_model(), train_part, epochs=1, device="cpu", progress=False, **cu.RECOMMENDED_TRAINING)
    assert by_recipe.step_losses == by_name.step_losses
    overridden = cu.fit(small_model(), train_part, None, recipe, lr=1e-4, device="cpu", progress=False)
    assert overridden.step_losses[0] == by_recipe.step_losses[0]  # same start: same seed, model and first batch
    assert overridden.step_losses[-1] > by_recipe.step_losses[-1]  # a 50x smaller learning rate learns less
    assert recipe.lr == cu.RECOMMENDED_TRAINING["lr"]  # the recipe itself is unchanged (frozen)


def test_a_misspelt_setting_names_the_known_ones(train_part):
    with pytest.raises(cu.CourseError, match=r"Unknown training setting\(s\) 'learning_rate'.*lr.*Check the spelling"):
        cu.fit(small_model(), train_part, learning_rate=1e-3, device="cpu", progress=False)
    assert cu.Recipe().replace(epochs=3).epochs == 3
    assert set(cu.Recipe().step_settings()) <= set(inspect.signature(cu.TrainStep).parameters)
