"""course_utils.timing (fit's step timed, FLOP/s) and chapter 05's helpers (seeds' loop, ladder, memory).

Also fit_with_batch_fallback (course_utils.training), which chapter 05 introduces.
"""
import math

import pytest
import torch
from torch import nn

import course_utils as cu
from course_utils import timing as speed
from course_utils.chapters import _ch05_measurements as ch05


@pytest.fixture(scope="module")
def fashion(fashion_train):
    return fashion_train.subset(512, seed=1)  # loaded through an isolated data root: no pack lands in data/


def _weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_tutorial_transform_matches_course_scaling(fashion):
    """ToTensor (+ Normalize(0.5, 0.5)) must give exactly the course's to_float scaling."""
    from PIL import Image
    for value_range in ((0.0, 1.0), (-1.0, 1.0)):
        t = ch05.tutorial_transform(value_range, 1)
        x = t(Image.fromarray(fashion.images[3, 0].numpy()))
        assert x.shape == (1, 28, 28)
        torch.testing.assert_close(x, cu.to_float(fashion.images[3], value_range), atol=1e-6, rtol=0)
    with pytest.raises(cu.CourseError):
        ch05.tutorial_transform((0.0, 255.0), 1)


def test_fit_tutorial_style_trains_and_times(fashion):
    torch.manual_seed(0)
    model = cu.KapilshAutoencoder()
    before = _weights(model)
    r = ch05.fit_tutorial_style(model, fashion, 32, epochs=2, lr=1e-2, max_batches=6, warmup=2, device="cpu")
    assert len(r.losses) == 12 and all(math.isfinite(v) for v in r.losses)
    assert len(r.rates) == 2 and r.images == (4 + 6) * 32  # warm-up batches of epoch 1 are not timed
    assert r.images_per_second == pytest.approx(sum(r.rates) / 2)  # the median of two
    assert 0 < r.data_fraction < 1 and r.warmup_seconds > 0
    assert sum(r.losses[-3:]) < sum(r.losses[:3])  # it really trains
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(cu.CourseError):
        ch05.fit_tutorial_style(model, fashion, 32, max_batches=2, warmup=2, device="cpu")


@pytest.mark.parametrize("options", [{"amp": False, "channels_last": False, "fused": False},
                                     {}],  # {}: the "auto" defaults, bf16 + channels_last + fused where fast
                         ids=["float32", "defaults"])
def test_measure_throughput_is_fits_step(fashion, options):
    """Same seed, data, optimizer and steps: the losses must equal fit's own step losses."""
    torch.manual_seed(0)
    a = cu.KapilshAutoencoder()
    b = cu.KapilshAutoencoder()
    b.load_state_dict(a.state_dict())
    r = speed.measure_throughput(a, fashion, 64, steps=2, warmup=1, repeats=2, device="cpu", lr=1e-3,
                                 optimizer="adam", schedule=None, seed=3, **options)
    history = cu.fit(b, fashion, epochs=1, batch_size=64, lr=1e-3, optimizer="adam", schedule=None, seed=3,
                     device="cpu", progress=False, stop_after_steps=5, **options)
    assert len(r.losses) == 5 and len(r.rates) == 2 and r.images == 2 * 2 * 64
    assert r.losses == pytest.approx(history.step_losses, rel=1e-5)
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])


def test_measure_throughput_options(fashion):
    torch.manual_seed(0)
    r = speed.measure_throughput(cu.KapilshAutoencoder(), fashion, 128, steps=2, warmup=1, repeats=1,
                                 device="cpu", channels_last=True, amp="bf16", fused=True, optimizer="adamw")
    assert r.settings["amp"] == "bfloat16" and r.settings["fused"] and r.settings["channels_last"]
    assert all(math.isfinite(v) for v in r.losses) and r.images_per_second > 0
    # 4 batches of 128 per epoch: 6 steps wrap into a second epoch without error
    r = speed.measure_throughput(cu.KapilshAutoencoder(), fashion, 128, steps=3, warmup=0, repeats=2, device="cpu")
    assert len(r.losses) == 6
    with pytest.raises(cu.CourseError, match="CUDA"):
        speed.measure_throughput(cu.KapilshAutoencoder(), fashion, 64, steps=1, device="cpu", amp="fp16")
    with pytest.raises(cu.CourseError):
        speed.measure_throughput(cu.KapilshAutoencoder(), fashion, 64, steps=0, device="cpu")


def test_speedup_table_ratios():
    fast = speed.Throughput(300.0, [290.0, 300.0, 310.0], 256, 768, 2.56, [])
    slow = speed.Throughput(100.0, [100.0], 64, 64, 0.64, [])
    table = speed.speedup_table({"seed": slow, "fast": fast, "fp16": "n/a on CPU: needs CUDA"})
    assert list(table.index) == ["seed", "fast", "fp16"]
    assert table.loc["fast", "x seed"] == 3.0 and table.loc["seed", "x seed"] == 1.0
    assert table.loc["fast", "images/s"] == 300 and table.loc["fast", "spread"] == "290-310"
    assert table.loc["fp16", "note"].startswith("n/a") and table["images/s"].isna().sum() == 1
    with pytest.raises(cu.CourseError):
        speed.speedup_table({"x": "n/a"})


def test_matmul_flops_measures():
    result = speed.matmul_flops((128, 512), repeats=3, device="cpu")
    assert list(result) == [128, 512]
    # loose bounds (a shared CPU can be slow): between 10 MFLOP/s and 100 TFLOP/s
    assert all(1e7 < v < 1e14 for v in result.values())
    assert list(speed.matmul_flops(128, repeats=1, device="cpu")) == [128]
    with pytest.raises(cu.CourseError):
        speed.matmul_flops(0, device="cpu")


def test_training_flops_is_flop_count_times_rate():
    model = cu.KapilshAutoencoder()
    per_image = cu.flops_per_image(model, (1, 28, 28))
    result = speed.training_flops(model, (1, 28, 28), 1000.0)
    assert result["flops_per_image"] == per_image > 0
    assert result["flops_per_second"] == pytest.approx(1000.0 * per_image)
    # forward 2*MACs of the 4 layers; backward about twice that (the first conv needs no input gradient)
    forward = cu.flops_per_image(model, (1, 28, 28), backward=False)
    assert 2 * forward < per_image < 3.1 * forward


def test_peak_memory_is_none_without_cuda():
    if torch.cuda.is_available():
        pytest.skip("CUDA present: covered by test_peak_memory_grows_with_batch")
    assert ch05.peak_memory_by_batch_size(cu.KapilshAutoencoder(), (1, 28, 28), [8, 16]) is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_peak_memory_grows_with_batch():
    mem = ch05.peak_memory_by_batch_size(cu.PaperspaceAutoencoder(), (3, 32, 32), [32, 256], device="cuda")
    assert set(mem) == {32, 256} and 0 < mem[32] < mem[256]


class _SmallGPU(nn.Module):
    """Wrap a model and raise CUDA's out-of-memory error for batches above ``limit`` after ``after`` calls."""

    def __init__(self, inner, limit, after=0):
        super().__init__()
        self.inner, self.limit, self.after, self.calls = inner, limit, after, 0

    def forward(self, x):
        self.calls += 1
        if x.shape[0] > self.limit and self.calls > self.after:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (simulated)")
        return self.inner(x)


def test_fit_with_batch_fallback_halves_and_restores(fashion, capsys):
    torch.manual_seed(0)
    inner = cu.KapilshAutoencoder()
    start = _weights(inner)
    # fails mid-run (after 3 forward calls: the shape check and two steps) until the batch is <= 32
    model = _SmallGPU(inner, limit=32, after=3)
    history, used = cu.fit_with_batch_fallback(model, fashion, batch_size=128, epochs=1, schedule=None,
                                                  device="cpu", progress=False, seed=2)
    assert used == 32 and len(history) == 1
    out = capsys.readouterr().out
    assert "batch size 128; retrying with 64" in out and "batch size 64; retrying with 32" in out
    # the weights were restored before each retry: same result as training at 32 from the start
    reference = cu.KapilshAutoencoder()
    reference.load_state_dict(start)
    cu.fit(reference, fashion, epochs=1, batch_size=32, schedule=None, device="cpu", progress=False, seed=2)
    for k, v in reference.state_dict().items():
        torch.testing.assert_close(inner.state_dict()[k], v)
    with pytest.raises(cu.CourseError, match="even at batch size 16"):
        cu.fit_with_batch_fallback(_SmallGPU(cu.KapilshAutoencoder(), limit=4), fashion, batch_size=64,
                                      min_batch_size=16, device="cpu", progress=False)


def test_improvement_ladder_real_run(fashion):
    build = cu.KapilshAutoencoder
    results, kept = ch05.improvement_ladder(
        build, fashion, [("base", {"batch_size": 64}), ("fp16", "n/a on CPU: needs CUDA"),
                         ("channels_last", {"channels_last": True})],
        images_per_repeat=128, warmup=1, repeats=2, device="cpu", verbose=False)
    assert list(results) == ["base", "fp16", "channels_last"] and results["fp16"].startswith("n/a")
    r = results["channels_last"]
    assert r.batch_size == 64 and r.settings["channels_last"] and r.settings["batch_size"] == 64
    assert len(r.rates) == 2 and r.images == 2 * 2 * 64  # images_per_repeat // batch = 2 steps a repeat
    assert results["base"].note == "kept" and kept["batch_size"] == 64
    with pytest.raises(cu.CourseError, match="batch_size"):
        ch05.improvement_ladder(build, fashion, [("x", {"fused": True})], device="cpu", verbose=False)
    with pytest.raises(cu.CourseError, match="Unknown setting"):
        ch05.improvement_ladder(build, fashion, [("x", {"batch": 64})], device="cpu", verbose=False)


def test_improvement_ladder_keeps_only_what_helps(fashion, monkeypatch):
    """With known rates: a slower change is dropped and later rows are measured without it."""
    rate = {(64, False, False): 100.0, (256, False, False): 150.0, (256, True, False): 120.0,
            (256, False, True): 180.0}
    built, timed = [], []

    class FakeSteps:
        def __init__(self, model, data, batch_size, **kw):
            self.batch_size = batch_size
            self.key = (batch_size, kw.get("channels_last", False), kw.get("fused", False))
            self.settings = {**kw, "batch_size": batch_size}
            built.append(self.key)

        def run(self, steps):
            timed.append(self.key)
            return steps * self.batch_size / rate[self.key]

        def loss_values(self):
            return []

    monkeypatch.setattr(ch05, "TimedSteps", FakeSteps)
    results, kept = ch05.improvement_ladder(
        cu.KapilshAutoencoder, fashion, [("64", {"batch_size": 64}), ("256", {"batch_size": 256}),
                                         ("cl", {"channels_last": True}), ("fused", {"fused": True})],
        device="cpu", verbose=False, repeats=2, warmup=1)
    assert built == [(64, False, False), (256, False, False), (256, True, False), (256, False, True)]
    # each candidate's blocks alternate with blocks of the best setup so far
    assert timed[3:8] == [(256, False, False), (64, False, False), (256, False, False), (64, False, False),
                          (256, False, False)]
    assert results["cl"].note == "dropped: 20% slower than the best so far (150 images/s in turns)"
    assert results["fused"].note == "kept: +20% vs the best so far (150 images/s in turns)"  # the reference, shown
    assert kept == {"batch_size": 256, "fused": True}
    table = speed.speedup_table(results)
    assert table.loc["fused", "x 64"] == 1.8 and table.loc["cl", "note"].startswith("dropped")


def test_interleave_takes_turns_and_merges():
    calls = []

    def job(name, value):
        def run(r):
            calls.append((name, r))
            return speed.Throughput(value + r, [value + r, value + r + 10], 32, 64, 1.0, [0.5], 0.1, 0.2)
        return run

    merged = speed.interleave({"a": job("a", 100.0), "b": job("b", 200.0)}, rounds=3)
    assert calls == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert merged["a"].rates == [100, 110, 101, 111, 102, 112]
    assert merged["a"].images_per_second == 106.0 and merged["b"].images_per_second == 206.0
    assert merged["a"].images == 192 and merged["a"].losses == [0.5] * 3 and merged["a"].data_fraction == 0.2
    with pytest.raises(cu.CourseError):
        speed.interleave({"a": job("a", 1.0)}, rounds=0)
