"""Measure training speed honestly: the seed tutorials' loop, `fit`-style steps, matmul FLOP/s, GPU memory.

Every rate here is images per second over *timed* steps only: warm-up steps (first-call
allocations, thread-pool start-up, ``torch.compile``'s compilation) run first and are not
counted, and GPU work is synchronised before a clock is read. Repeats give a median, which
a background process on a shared machine disturbs far less than a mean.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch
from torch import nn

from .data import DeviceBatches, ImageData, ImageDataset
from .environment import get_device
from .errors import CourseError
from .metrics import model_value_range
from .models import flops_per_image

OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


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


def _sync(device: torch.device) -> None:
    """Wait until queued GPU work is done, so a clock read means what it says."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


# --------------------------------------------------------------------------- the seeds' loop
def tutorial_transform(value_range: tuple[float, float], channels: int):
    """Return the seeds' torchvision transform: ToTensor, plus Normalize(0.5, 0.5) for [-1, 1]."""
    from torchvision import transforms

    steps = [transforms.ToTensor()]  # PIL (H, W, C) uint8 => float (C, H, W) in [0, 1]
    if tuple(value_range) == (-1.0, 1.0):
        steps.append(transforms.Normalize((0.5,) * channels, (0.5,) * channels))  # [0, 1] => [-1, 1]
    elif tuple(value_range) != (0.0, 1.0):
        raise CourseError(f"The seeds' transforms give [0, 1] or [-1, 1] images, not {value_range}.")
    return transforms.Compose(steps)


def fit_tutorial_style(model: nn.Module, data: ImageData, batch_size: int, epochs: int = 1, lr: float = 1e-3,
                       value_range: tuple[float, float] | None = None, max_batches: int | None = None, *,
                       device: torch.device | str | None = None, warmup: int = 2, seed: int = 0,
                       num_workers: int = 0) -> Throughput:
    """Train the way the seed tutorials do (PIL images through a DataLoader) and time it.

    Per sample: a PIL image, ``ToTensor`` (and ``Normalize`` for [-1, 1] models); per step:
    the batch copied to the device, Adam, ``loss.item()``. Each epoch (at most ``max_batches``
    steps) is one timed repeat; the first ``warmup`` steps of the first epoch are not timed.
    """
    from torch.utils.data import DataLoader

    device = torch.device(device) if device is not None else get_device()
    value_range = tuple(value_range or model_value_range(model))
    dataset = ImageDataset(data, tutorial_transform(value_range, data.image_shape[0]), as_pil=True)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                        generator=torch.Generator().manual_seed(seed))
    n_batches = min(len(loader), max_batches or len(loader))
    if epochs <= 0 or n_batches <= warmup:
        raise CourseError(f"Need epochs >= 1 and more than warmup={warmup} batches per epoch; got "
                          f"epochs={epochs} and {n_batches} batches of {batch_size}.")
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    criterion = nn.MSELoss()
    losses: list[float] = []
    rates, timed_images, timed_seconds, data_seconds, warmup_seconds = [], 0, 0.0, 0.0, 0.0
    for epoch in range(epochs):
        skip = warmup if epoch == 0 else 0
        batches = iter(loader)
        t_first = time.perf_counter()
        t0, images_seen, waited = None, 0, 0.0
        for b in range(n_batches):
            if b == skip:
                _sync(device)
                t0 = time.perf_counter()
                warmup_seconds += t0 - t_first if skip else 0.0
            t_wait = time.perf_counter()
            images, _ = next(batches)  # decode PIL images and transform them, one sample at a time
            if t0 is not None:
                waited += time.perf_counter() - t_wait
            images = images.to(device)  # copied to the device every step
            out = model(images)
            loss = criterion(out, images)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())  # a host sync every step
            if t0 is not None:
                images_seen += images.shape[0]
        _sync(device)
        seconds = time.perf_counter() - t0
        rates.append(images_seen / seconds)
        timed_images, timed_seconds, data_seconds = timed_images + images_seen, timed_seconds + seconds, \
            data_seconds + waited
    return Throughput(statistics.median(rates), rates, batch_size, timed_images, timed_seconds, losses,
                      warmup_seconds, data_seconds / timed_seconds,
                      {"loop": "tutorial", "value_range": list(value_range), "lr": lr})


# --------------------------------------------------------------------------- fit-style steps
def _amp_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    if amp in (False, None, "none"):
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise CourseError("fp16 mixed precision with a gradient scaler needs a CUDA GPU; on the CPU "
                              "use amp='bf16' (or no mixed precision).")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if amp is True or amp == "auto":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return torch.float16
        return torch.bfloat16
    raise CourseError(f"amp must be False, True, 'bf16' or 'fp16', got {amp!r}.")


def _endless_batches(batches: DeviceBatches) -> Iterator[torch.Tensor]:
    epoch = 0
    while True:
        yield from batches.batches(epoch)
        epoch += 1


class _FitSteps:
    """`fit`'s training step on resident uint8 batches, run in timed blocks (state kept between blocks)."""

    def __init__(self, model: nn.Module, data: ImageData, batch_size: int, *, device: torch.device,
                 lr: float = 1e-3, optimizer: str = "adam", amp: bool | str = False, channels_last: bool = False,
                 fused: bool = False, compile: bool = False, value_range: tuple[float, float] | None = None,
                 seed: int = 0):
        optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
        if optimizer not in optimizers:
            raise CourseError(f"optimizer must be 'adam' or 'adamw', got {optimizer!r}.")
        self.device, self.batch_size = device, batch_size
        value_range = tuple(value_range or model_value_range(model))
        self.amp_dtype = _amp_dtype(amp, device)
        batches = DeviceBatches(data, batch_size, device, shuffle=True, value_range=value_range, drop_last=True,
                                seed=seed, channels_last=channels_last)
        model.to(device).train()
        if channels_last:
            model.to(memory_format=torch.channels_last)
        self.opt = optimizers[optimizer](model.parameters(), lr=lr, **({"fused": True} if fused else {}))
        self.scaler = torch.amp.GradScaler(device.type) if self.amp_dtype == torch.float16 else None
        self.model = torch.compile(model) if compile else model
        self.source = _endless_batches(batches)
        self.losses: list[torch.Tensor] = []  # stay on the device; read once at the end
        self.settings = {"loop": "fit", "optimizer": optimizer, "lr": lr,
                         "amp": str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
                         "channels_last": channels_last, "fused": fused, "compile": compile,
                         "value_range": list(value_range), "batch_size": batch_size}

    def step(self, x: torch.Tensor) -> torch.Tensor:
        if self.amp_dtype is not None:
            with torch.autocast(self.device.type, dtype=self.amp_dtype):
                out = self.model(x)
        else:
            out = self.model(x)
        loss = nn.functional.mse_loss(out.float(), x)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            loss.backward()
            self.opt.step()
        return loss.detach()

    def run(self, steps: int) -> float:
        """Run ``steps`` training steps; return their wall-clock seconds (GPU work included)."""
        _sync(self.device)
        t0 = time.perf_counter()
        for _ in range(steps):
            self.losses.append(self.step(next(self.source)))
        _sync(self.device)
        return time.perf_counter() - t0

    def loss_values(self) -> list[float]:
        """Return every step's loss so far as floats (one host sync)."""
        return torch.stack(self.losses).cpu().tolist() if self.losses else []


def measure_throughput(model: nn.Module, data: ImageData, batch_size: int, *, steps: int = 20,
                       warmup: int = 3, repeats: int = 3, device: torch.device | str | None = None,
                       lr: float = 1e-3, optimizer: str = "adam", amp: bool | str = False,
                       channels_last: bool = False, fused: bool = False, compile: bool = False,
                       value_range: tuple[float, float] | None = None, seed: int = 0) -> Throughput:
    """Time ``repeats`` blocks of ``steps`` fit-style training steps after ``warmup`` steps; return the median.

    The step is `fit`'s: uint8 images resident on the device, shuffled and scaled there in
    whole batches (DeviceBatches), the loss kept on the device (no per-step ``.item()``),
    optional channels_last, autocast (bf16, or fp16 with a GradScaler), a fused optimizer
    and ``torch.compile``. ``model`` is trained in place.
    """
    if steps <= 0 or repeats <= 0 or warmup < 0:
        raise CourseError(f"Need steps >= 1, repeats >= 1 and warmup >= 0; got {steps}, {repeats}, {warmup}.")
    device = torch.device(device) if device is not None else get_device()
    runner = _FitSteps(model, data, batch_size, device=device, lr=lr, optimizer=optimizer, amp=amp,
                       channels_last=channels_last, fused=fused, compile=compile, value_range=value_range, seed=seed)
    warmup_seconds = runner.run(warmup) if warmup else 0.0
    seconds = [runner.run(steps) for _ in range(repeats)]
    rates = [steps * batch_size / t for t in seconds]
    return Throughput(statistics.median(rates), rates, batch_size, steps * batch_size * repeats, sum(seconds),
                      runner.loss_values(), warmup_seconds, None, runner.settings)


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


LADDER_OPTIONS = ("batch_size", "channels_last", "amp", "fused", "compile", "optimizer")


def improvement_ladder(build_model, data: ImageData, changes: Sequence[tuple[str, dict | str]], *,
                       images_per_repeat: int = 1024, warmup: int = 2, repeats: int = 3,
                       device: torch.device | str | None = None, lr: float = 1e-3, seed: int = 0,
                       verbose: bool = True) -> tuple[dict[str, Throughput | str], dict]:
    """Measure each change on top of the fastest settings so far; return results and the kept settings.

    ``changes`` is a list of (name, settings) where settings holds some of batch_size,
    channels_last, amp, fused, compile, optimizer (the first must give batch_size), or a
    string saying why the change does not apply here. Each candidate (a fresh
    ``build_model()`` under the same seed) is timed in blocks that alternate with blocks of
    the best setup so far, so both see the same machine; it is kept only if its median is
    higher, and later rows build on the kept settings.
    """
    device = torch.device(device) if device is not None else get_device()
    results: dict[str, Throughput | str] = {}
    kept: dict = {}
    best: _FitSteps | None = None
    for name, change in changes:
        if isinstance(change, str):
            results[name] = change
            if verbose:
                print(f"{name:34s} {change}")
            continue
        unknown = set(change) - set(LADDER_OPTIONS)
        if unknown:
            raise CourseError(f"Unknown setting(s) {sorted(unknown)}; choose from {', '.join(LADDER_OPTIONS)}.")
        settings = {**kept, **change}
        if "batch_size" not in settings:
            raise CourseError("The first change of a ladder must set batch_size.")
        bs = settings["batch_size"]
        steps = max(2, images_per_repeat // bs)
        torch.manual_seed(seed)
        try:
            candidate = _FitSteps(build_model(), data, bs, device=device, lr=lr, seed=seed,
                                  **{k: v for k, v in settings.items() if k != "batch_size"})
            warmup_seconds = candidate.run(warmup) if warmup else 0.0
            seconds, best_rates = [], []
            for _ in range(repeats):
                if best is not None:
                    b_steps = max(2, images_per_repeat // best.batch_size)
                    best_rates.append(b_steps * best.batch_size / best.run(b_steps))
                seconds.append(candidate.run(steps))
            rates = [steps * bs / t for t in seconds]
        except CourseError:
            raise
        except Exception as e:  # e.g. torch.compile without a working C++ compiler
            results[name] = f"failed here: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"
            if verbose:
                print(f"{name:34s} {results[name]}")
            continue
        r = Throughput(statistics.median(rates), rates, bs, steps * bs * repeats, sum(seconds),
                       candidate.loss_values(), warmup_seconds, None, candidate.settings)
        if best is None:
            r.note = "kept"
        else:
            ratio = r.images_per_second / statistics.median(best_rates)
            r.note = (f"kept: +{ratio - 1:.0%} vs the best so far" if ratio > 1 else
                      f"dropped: {1 - ratio:.0%} slower than the best so far")
        if best is None or r.note.startswith("kept"):
            kept, best = settings, candidate
        if r.warmup_seconds > 5:
            r.note += f" (warm-up {r.warmup_seconds:.0f} s)"
        results[name] = r
        if verbose:
            print(f"{name:34s} {r.images_per_second:8,.0f} images/s  {r.note}", flush=True)
    return results, kept


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
        _sync(device)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            a @ b
            _sync(device)
            times.append(time.perf_counter() - t0)
        result[n] = 2 * n ** 3 / statistics.median(times)
    return result


def training_flops(model: nn.Module, image_shape: Sequence[int], images_per_second: float) -> dict[str, float]:
    """Return the training FLOPs per image and the FLOP/s achieved at ``images_per_second``."""
    was = next(model.parameters()).device
    per_image = flops_per_image(model.cpu(), image_shape)
    model.to(was)
    return {"flops_per_image": float(per_image), "flops_per_second": float(per_image * images_per_second)}


# --------------------------------------------------------------------------- GPU memory
def peak_memory_by_batch_size(model: nn.Module, image_shape: Sequence[int], batch_sizes: Sequence[int], *,
                              device: torch.device | str | None = None, amp: bool | str = False,
                              channels_last: bool = False) -> dict[int, float | None] | None:
    """Return the peak GPU memory (MiB) of one training step per batch size; None when not on CUDA.

    A batch size that runs out of memory maps to None and larger ones are not tried.
    """
    device = torch.device(device) if device is not None else get_device()
    if device.type != "cuda":
        return None
    amp_dtype = _amp_dtype(amp, device)
    model = copy.deepcopy(model).to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    result: dict[int, float | None] = {}
    for bs in sorted(batch_sizes):
        failed = False
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.rand(bs, *image_shape, device=device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=amp_dtype, enabled=amp_dtype is not None):
                out = model(x)
            loss = nn.functional.mse_loss(out.float(), x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            torch.cuda.synchronize(device)
            result[bs] = torch.cuda.max_memory_allocated(device) / 2**20
            del x, out, loss
        except OutOfMemoryError:
            failed = True  # clean up outside the except block: the traceback holds the tensors
        if failed:
            opt.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            result[bs] = None
            break
    del model, opt
    gc.collect()
    torch.cuda.empty_cache()
    return result


def fit_with_batch_fallback(model: nn.Module, train, *, batch_size: int, min_batch_size: int = 1,
                            **fit_kwargs):
    """Run `fit`, halving the batch size after each out-of-memory error; return (History, batch size used).

    The model's weights are restored before each retry, so every attempt starts from the
    same point. Raises CourseError when even ``min_batch_size`` does not fit.
    """
    from .training import fit

    start = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    while True:
        failed = False
        try:
            return fit(model, train, batch_size=batch_size, **fit_kwargs), batch_size
        except OutOfMemoryError:
            failed = True  # handled below: inside `except` the traceback still pins the tensors
        if failed:
            model.load_state_dict(start)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if batch_size // 2 < min_batch_size:
                raise CourseError(f"Out of memory even at batch size {batch_size} (min_batch_size="
                                  f"{min_batch_size}). Use a smaller model or images, amp=True, or the CPU.")
            print(f"Out of memory at batch size {batch_size}; retrying with {batch_size // 2}.")
            batch_size //= 2
