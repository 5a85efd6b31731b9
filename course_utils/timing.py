"""Measure training speed honestly: timed blocks of `TrainStep`, medians, turns, FLOP/s.

Every rate here is images per second over *timed* steps only: warm-up steps (first-call
allocations, thread-pool start-up, ``torch.compile``'s compilation) run first and are not
counted, and GPU work is synchronised before a clock is read. Repeats give a median, which
a background process on a shared machine disturbs far less than a mean.
"""
from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .data import DeviceBatches, ImageData
from .engine import TrainStep, endless_batches, sync
from .environment import get_device
from .errors import CourseError
from .metrics import model_value_range
from .layers import flops_per_image


@dataclasses.dataclass
class Throughput:
    """One speed measurement: the median images/second over repeats, and what it was made of."""

    images_per_second: float  # median of ``rates``
    rates: list[float]  # images/second of each timed repeat
    batch_size: int
    images: int  # images in all timed steps together
    seconds: float  # timed seconds together
    losses: list[float]  # every step's training loss, warm-up included
    warmup_seconds: float = 0.0  # untimed: first steps (and compilation, with torch.compile)
    data_fraction: float | None = None  # share of timed seconds spent waiting for the DataLoader
    settings: dict = dataclasses.field(default_factory=dict)
    note: str = ""  # e.g. whether an improvement ladder kept this change

    def __repr__(self) -> str:
        spread = f"{min(self.rates):,.0f}-{max(self.rates):,.0f}" if self.rates else "-"
        return (f"Throughput({self.images_per_second:,.0f} images/s, median of {len(self.rates)} "
                f"(range {spread}), batch {self.batch_size})")


class TimedSteps:
    """`fit`'s training step (`TrainStep`) on resident uint8 batches, run in timed blocks.

    The model, optimizer and data order carry over from one block to the next, so blocks of
    two setups can take turns on the same machine. Settings are `TrainStep`'s options.
    """

    def __init__(self, model: nn.Module, data: ImageData, batch_size: int, *, device: torch.device | str | None = None,
                 value_range: tuple[float, float] | None = None, seed: int = 0, **step_options):
        self.device = torch.device(device) if device is not None else get_device()
        self.batch_size = batch_size
        value_range = tuple(value_range or model_value_range(model))
        self.step = TrainStep(model, device=self.device, **step_options)
        self.source = endless_batches(DeviceBatches(data, batch_size, self.device, shuffle=True,
                                                    value_range=value_range, drop_last=True, seed=seed,
                                                    channels_last=self.step.channels_last))  # the step's layout
        self.losses: list[torch.Tensor] = []  # stay on the device; read once at the end
        self.settings = {"loop": "fit", **self.step.settings, "value_range": list(value_range),
                         "batch_size": batch_size}

    def run(self, steps: int) -> float:
        """Run ``steps`` training steps; return their wall-clock seconds (GPU work included)."""
        sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.losses.append(self.step(next(self.source)))
        sync(self.device)
        return time.perf_counter() - t0

    def loss_values(self) -> list[float]:
        """Return every step's loss so far as floats (one host sync)."""
        return torch.stack(self.losses).cpu().tolist() if self.losses else []

    def measure(self, steps: int, repeats: int, warmup: int = 0) -> Throughput:
        """Run ``warmup`` untimed steps, then ``repeats`` timed blocks of ``steps``; return the median rate."""
        if steps <= 0 or repeats <= 0 or warmup < 0:
            raise CourseError(f"Need steps >= 1, repeats >= 1 and warmup >= 0; got {steps}, {repeats}, {warmup}.")
        warmup_seconds = self.run(warmup) if warmup else 0.0
        seconds = [self.run(steps) for _ in range(repeats)]
        rates = [steps * self.batch_size / t for t in seconds]
        return Throughput(statistics.median(rates), rates, self.batch_size, steps * self.batch_size * repeats,
                          sum(seconds), self.loss_values(), warmup_seconds, None, self.settings)


def measure_throughput(model: nn.Module, data: ImageData, batch_size: int, *, steps: int = 20,
                       warmup: int = 3, repeats: int = 3, device: torch.device | str | None = None,
                       value_range: tuple[float, float] | None = None, seed: int = 0,
                       **step_options) -> Throughput:
    """Time ``repeats`` blocks of ``steps`` of fit's training step after ``warmup`` steps; return the median.

    The step is `TrainStep`, the one `fit` runs, with fit's defaults unless ``step_options``
    (lr, optimizer, amp, channels_last, fused, compile, schedule, ...) say otherwise; the data
    stays uint8 on the device (DeviceBatches). ``model`` is trained in place.
    """
    step_options.setdefault("schedule", "onecycle")
    step_options.setdefault("total_steps", warmup + steps * repeats)
    runner = TimedSteps(model, data, batch_size, device=device, value_range=value_range, seed=seed, **step_options)
    return runner.measure(steps, repeats, warmup)


def interleave(jobs: Mapping[str, Callable[[int], Throughput]], rounds: int = 3) -> dict[str, Throughput]:
    """Run each job once per round, taking turns, and merge its measurements; return one Throughput per job.

    Each job is called with the round number (use it as a seed) and returns a Throughput.
    Taking turns means a slow drift of the machine (another program starting, the CPU
    clocking down) hits every contender alike, which back-to-back measurements cannot promise.
    """
    if rounds <= 0:
        raise CourseError(f"rounds must be at least 1, got {rounds}.")
    runs: dict[str, list[Throughput]] = {name: [] for name in jobs}
    for r in range(rounds):
        for name, job in jobs.items():
            runs[name].append(job(r))
    merged = {}
    for name, rs in runs.items():
        rates = [v for t in rs for v in t.rates]
        fractions = [t.data_fraction for t in rs if t.data_fraction is not None]
        merged[name] = Throughput(statistics.median(rates), rates, rs[0].batch_size, sum(t.images for t in rs),
                                  sum(t.seconds for t in rs), [v for t in rs for v in t.losses],
                                  sum(t.warmup_seconds for t in rs),
                                  statistics.median(fractions) if fractions else None, rs[0].settings)
    return merged


def speedup_table(results: Mapping[str, Throughput | str], baseline: str | None = None):
    """Return a DataFrame of images/s and the ratio to ``baseline`` (default: the first row); str = why n/a."""
    import pandas as pd

    baseline = baseline or next(iter(results))
    base = results[baseline]
    if not isinstance(base, Throughput):
        raise CourseError(f"The baseline {baseline!r} has no measurement ({base}).")
    rows = []
    for name, r in results.items():
        if isinstance(r, Throughput):
            rows.append({"setup": name, "batch": r.batch_size, "images/s": round(r.images_per_second),
                         f"x {baseline}": round(r.images_per_second / base.images_per_second, 2),
                         "spread": f"{min(r.rates):,.0f}-{max(r.rates):,.0f}", "note": r.note})
        else:
            rows.append({"setup": name, "batch": None, "images/s": None, f"x {baseline}": None,
                         "spread": "", "note": str(r)})
    frame = pd.DataFrame(rows).set_index("setup")
    frame["batch"] = frame["batch"].astype("Int64")
    frame["images/s"] = frame["images/s"].astype("Int64")
    return frame


# --------------------------------------------------------------------------- compute
def matmul_flops(sizes: int | Sequence[int] = (2048, 4096), repeats: int = 3,
                 device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> dict[int, float]:
    """Return this machine's measured matmul FLOP/s (2 n^3 per n x n product), median of repeats, per size."""
    device = torch.device(device) if device is not None else get_device()
    sizes = [sizes] if isinstance(sizes, int) else list(sizes)
    g = torch.Generator().manual_seed(0)
    result = {}
    for n in sizes:
        if n <= 0:
            raise CourseError(f"Matrix sizes must be positive, got {n}.")
        a = torch.randn(n, n, generator=g, dtype=torch.float32).to(device, dtype)
        b = torch.randn(n, n, generator=g, dtype=torch.float32).to(device, dtype)
        a @ b  # warm-up: thread pool, kernel selection
        sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            sync(device)
            times.append(time.perf_counter() - t0)
        result[n] = 2 * n ** 3 / statistics.median(times)
    return result


def training_flops(model: nn.Module, image_shape: Sequence[int], images_per_second: float) -> dict[str, float]:
    """Return the training FLOPs per image and the FLOP/s achieved at ``images_per_second``."""
    was = next(model.parameters()).device
    per_image = flops_per_image(model.cpu(), image_shape)
    model.to(was)
    return {"flops_per_image": float(per_image), "flops_per_second": float(per_image * images_per_second)}
