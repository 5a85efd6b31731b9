"""Chapter 05: the learner's fast loop (saved from the notebook), `cu.TrainStep` as its sum, and the ladder's tools.

``device_batches`` and ``train_epoch_fast`` come from ``course_utils/chapters/ch05_fast_training.py``, generated from
the notebook's ``#@save`` cells (tests/test_save_cells.py keeps the two in sync); ``timed_block`` and
``climb_ladder`` from the hand-written ``course_utils/chapters/_ch05_measurements.py``.
"""
from __future__ import annotations

import copy

import pytest
import torch

import course_utils as cu
from course_utils.chapters._ch05_measurements import climb_ladder, gpu_ladder_lessons, gpu_results
from course_utils.chapters import _ch05_measurements as ch05
from course_utils.chapters.ch01_feature_extractors import Autoencoder, image_loader, train_epoch
from course_utils.chapters.ch05_fast_training import device_batches, train_epoch_fast

from conftest import needs_cifar


@pytest.fixture(scope="module")
def cifar(cifar_test):
    return cifar_test.subset(256, seed=3)


def _adam(model, fused=False, lr=1e-3):
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused)


def _colour_autoencoder():
    """Return chapter 01's autoencoder for 32x32 colour images: the same loop, many times cheaper than the replica."""
    torch.manual_seed(0)
    return Autoencoder(in_channels=3)


def test_device_batches_hand_out_every_image_once_in_a_seeded_order():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1) * 25
    batches = [x for (x,) in device_batches(images, 4, torch.Generator().manual_seed(0))]
    assert [len(x) for x in batches] == [4, 4, 2] and all(x.dtype == torch.float32 for x in batches)
    values = torch.cat(batches).flatten()
    assert torch.equal(values.sort().values, images.flatten().float() / 255)  # each image once, scaled to [0, 1]
    again = torch.cat([x for (x,) in device_batches(images, 4, torch.Generator().manual_seed(0))]).flatten()
    other = torch.cat([x for (x,) in device_batches(images, 4, torch.Generator().manual_seed(1))]).flatten()
    assert torch.equal(values, again) and not torch.equal(values, other)


@needs_cifar
def test_with_every_change_off_the_fast_loop_is_chapter_01_s_loop(cifar):
    a = _colour_autoencoder()
    b = copy.deepcopy(a)
    mine = train_epoch(a, image_loader(cifar.images[:128], 32, shuffle=True), _adam(a))
    fast = train_epoch_fast(b, image_loader(cifar.images[:128], 32, shuffle=True), _adam(b), read_each_step=True)
    assert len(mine) == 4 and fast == mine  # bit for bit on the CPU


@needs_cifar
@pytest.mark.parametrize("flags", [{}, {"channels_last": True}, {"amp_dtype": torch.bfloat16},
                                   {"channels_last": True, "amp_dtype": torch.bfloat16, "fused": True}],
                         ids=["plain", "channels_last", "bf16", "every rung"])
def test_the_fast_loop_learns_on_cifar10_with_each_rung_s_flags(cifar, flags):
    flags = dict(flags)
    model = _colour_autoencoder()
    optimizer = _adam(model, fused=flags.pop("fused", False), lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(3):
        losses += train_epoch_fast(model, device_batches(cifar.images, 32, generator), optimizer, **flags)
    assert len(losses) == 3 * 8 and all(isinstance(v, float) for v in losses)
    assert sum(losses[-4:]) < 0.7 * sum(losses[:4])  # it really trains
    if flags.get("channels_last"):
        assert model.encoder.net[0].weight.is_contiguous(memory_format=torch.channels_last)


@needs_cifar
def test_train_step_takes_the_same_steps_as_the_fast_loop_in_float32(cifar):
    """The chapter's check: the same start and batches, the kept options as cu.fit spells them; float32 on the CPU."""
    torch.manual_seed(0)
    mine = cu.PaperspaceAutoencoder()
    step = cu.TrainStep(copy.deepcopy(mine), device="cpu", lr=1e-3, optimizer="adam", schedule=None, amp=False,
                        channels_last=True, fused=True)
    batches = [(x.contiguous(memory_format=torch.channels_last),)
               for (x,) in device_batches(cifar.images[:128], 32, torch.Generator().manual_seed(1))]
    losses = train_epoch_fast(mine, batches, _adam(mine, fused=True), channels_last=True)
    theirs = torch.stack([step(x) for (x,) in batches])
    torch.testing.assert_close(theirs, torch.tensor(losses), rtol=1e-5, atol=0)
    for a, b in zip(mine.state_dict().values(), step.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_timed_block_times_one_call_and_keeps_its_losses():
    calls = []
    block = ch05.timed_block(lambda: calls.append(1) or [0.5, 0.25], 128, 32, device="cpu", settings={"a": 1})
    first, second = block(), block()
    assert calls == [1, 1] and first.images == 128 and first.batch_size == 32 and first.losses == [0.5, 0.25]
    assert first.rates == [first.images_per_second] and first.images_per_second == pytest.approx(128 / first.seconds)
    assert first.settings == {"a": 1} and second is not first
    assert ch05.timed_block(lambda: None, 8, 8, device="cpu")().losses == []
    with pytest.raises(cu.CourseError):
        ch05.timed_block(lambda: None, 0, 8, device="cpu")


def test_climb_ladder_keeps_a_change_only_when_faster_in_turns_and_builds_on_what_it_kept():
    rate = {(64, False, False): 100.0, (256, False, False): 150.0, (256, True, False): 120.0,
            (256, False, True): 180.0}
    started, timed = [], []

    def start(s):
        key = (s["batch"], s["cl"], s["fused"])
        started.append(key)

        def block():
            timed.append(key)
            return cu.Throughput(rate[key], [rate[key]], s["batch"], 10, 0.1, [1.0], settings=dict(s))
        return block

    changes = [("64", {"batch": 64, "cl": False, "fused": False}), ("256", {"batch": 256}),
               ("fp16", "n/a here: needs CUDA"), ("cl", {"cl": True}), ("fused", {"fused": True})]
    results, kept = climb_ladder(changes, start, repeats=2, warmup=1, verbose=False)
    assert started == [(64, False, False), (256, False, False), (256, True, False), (256, False, True)]
    assert timed[:3] == [(64, False, False)] * 3  # warm-up, then its 2 timed blocks
    assert timed[3:8] == [(256, False, False), (64, False, False), (256, False, False), (64, False, False),
                          (256, False, False)]  # each timed block after one of the best so far
    assert results["64"].note == "kept" and results["fp16"] == "n/a here: needs CUDA"
    assert results["256"].note == "kept: +50% vs the best so far (100 images/s in turns)"
    assert results["cl"].note == "dropped: 20% slower than the best so far (150 images/s in turns)"
    assert results["fused"].note == "kept: +20% vs the best so far (150 images/s in turns)"
    assert kept == {"batch": 256, "cl": False, "fused": True}
    r = results["fused"]
    assert r.rates == [180.0, 180.0] and r.images == 20 and r.losses == [1.0] * 3 and r.warmup_seconds == 0.1


def test_climb_ladder_reports_a_rung_that_fails_and_lets_a_learner_s_error_through(capsys):
    def start(s):
        if s.get("broken"):
            raise RuntimeError("no C++ compiler\nmore")
        if s.get("wrong"):
            raise cu.CourseError("fix this")
        return lambda: cu.Throughput(10.0, [10.0], 8, 8, 0.8, [])

    results, kept = climb_ladder([("base", {"x": 1}), ("compile", {"broken": True})], start, repeats=1)
    assert results["compile"] == "failed here: RuntimeError: no C++ compiler" and kept == {"x": 1}
    assert "compile" in capsys.readouterr().out
    with pytest.raises(cu.CourseError, match="fix this"):
        climb_ladder([("base", {"x": 1}), ("wrong", {"wrong": True})], start, repeats=1, verbose=False)
    with pytest.raises(cu.CourseError):
        climb_ladder([("base", {"x": 1})], start, repeats=0)


def test_gpu_ladder_lessons_compare_this_run_s_larger_batch_with_the_rung_before_it():
    stored = gpu_results()
    here = {"(0) chapter 01's train_epoch": cu.Throughput(50.0, [50.0], 64, 64, 1.3, []),
            "(1) + uint8 on the device": "skipped: for this test",
            "(2) + no .item() per step": cu.Throughput(100.0, [100.0], 64, 640, 6.4, []),
            "(3) + larger batch (256)": cu.Throughput(120.0, [120.0], 256, 2560, 21.0, [])}
    assert "; 1.20x here (64 => 256 images)." in gpu_ladder_lessons(stored, here)[1]
    first = {"(3) + larger batch (256)": here["(3) + larger batch (256)"]}
    assert " here " not in gpu_ladder_lessons(stored, first)[1]  # nothing before it to compare with
