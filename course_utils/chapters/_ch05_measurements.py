"""Chapter 05 (fast training), the hand-written part: the seeds' loop, timed blocks, ladders, GPU memory and results.

The code the chapter teaches (``device_batches``, ``train_epoch_fast``) is in ``ch05_fast_training``, generated
from the notebook's ``#@save`` cells; this module holds the measuring around it. `climb_ladder` times each change
in turns with the fastest settings so far and keeps it only if it is faster: the chapter climbs it with the
learner's own loop, `improvement_ladder` with `TrainStep`'s options (``benchmarks/gpu_suite.py``). Also the GPU
numbers measured by ``benchmarks/gpu_suite.py`` (`gpu_results`), for a learner without a GPU.
"""
from __future__ import annotations

import copy
import dataclasses
import gc
import json
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from ..data import ImageData, ImageDataset
from ..engine import TrainStep, sync
from ..environment import get_device
from ..errors import CourseError
from ..metrics import model_value_range
from ..timing import Throughput, TimedSteps

OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


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
    This loop is deliberately *not* `TrainStep`: it is the baseline the course improves on.
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
                sync(device)
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
        sync(device)
        seconds = time.perf_counter() - t0
        rates.append(images_seen / seconds)
        timed_images, timed_seconds, data_seconds = timed_images + images_seen, timed_seconds + seconds, \
            data_seconds + waited
    return Throughput(statistics.median(rates), rates, batch_size, timed_images, timed_seconds, losses,
                      warmup_seconds, data_seconds / timed_seconds,
                      {"loop": "tutorial", "value_range": list(value_range), "lr": lr})


# --------------------------------------------------------------------------- timed blocks and the ladder
def timed_block(train: Callable[[], Sequence[float] | None], images: int, batch_size: int, *,
                device: torch.device | str | None = None, settings: dict | None = None) -> Callable[[], Throughput]:
    """Return a function that runs ``train()`` once (it trains ``images`` images), timed, and returns its Throughput.

    The clock starts and stops with the device idle (`sync`), so queued GPU work is counted; what
    ``train()`` returns (its step losses, or None) becomes the Throughput's ``losses``.
    """
    device = torch.device(device) if device is not None else get_device()
    if images <= 0:
        raise CourseError(f"A timed block must train at least one image, got images={images}.")

    def block() -> Throughput:
        sync(device)
        t0 = time.perf_counter()
        losses = train()
        sync(device)
        seconds = time.perf_counter() - t0
        rate = images / seconds
        return Throughput(rate, [rate], batch_size, images, seconds, [float(v) for v in losses or []],
                          settings=dict(settings or {}))

    return block


def _failure(e: Exception) -> str:
    """Return why a rung could not run, in one line."""
    return f"failed here: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}"


def climb_ladder(changes: Sequence[tuple[str, dict | str]], start: Callable[[dict], Callable[[], Throughput]], *,
                 repeats: int = 3, warmup: int = 1, verbose: bool = True,
                 on_row: Callable[[str, Throughput | str], None] | None = None
                 ) -> tuple[dict[str, Throughput | str], dict]:
    """Time each change on top of the fastest settings so far, in turns with them; return results and kept settings.

    ``changes`` is a list of (name, settings to change) where the first gives every starting
    setting, or (name, a string saying why the change does not apply here). ``start(settings)``
    prepares a fresh run with the kept settings plus the change (a new model under the same seed)
    and returns a function that trains one block and returns its `Throughput` (`timed_block` makes
    one). Each candidate runs ``warmup`` untimed blocks, then ``repeats`` timed blocks, each after a
    block of the best settings so far, so both see the same machine; it is kept only if its median
    is higher, and later rows build on the kept settings. Each row's note gives the change against
    that reference and the reference's own median (it can differ from the reference's row in the
    table, which was timed earlier). ``on_row(name, result)`` is called after each row (to save it;
    an exception it raises stops the ladder). Errors a learner can fix (`CourseError`) propagate;
    any other error becomes the row's "failed here" reason (e.g. torch.compile without a compiler).
    """
    if repeats <= 0 or warmup < 0:
        raise CourseError(f"Need repeats >= 1 and warmup >= 0; got repeats={repeats}, warmup={warmup}.")
    results: dict[str, Throughput | str] = {}
    kept: dict = {}
    best: Callable[[], Throughput] | None = None
    for name, change in changes:
        if isinstance(change, str):
            results[name] = change
        else:
            settings = {**kept, **change}
            try:
                candidate = start(settings)
                warm = [candidate() for _ in range(warmup)]
                blocks, best_rates = [], []
                for _ in range(repeats):
                    if best is not None:
                        best_rates.append(best().images_per_second)
                    blocks.append(candidate())
            except CourseError:
                raise
            except Exception as e:
                results[name] = _failure(e)
            else:
                rates = [t.images_per_second for t in blocks]
                r = Throughput(statistics.median(rates), rates, blocks[0].batch_size, sum(t.images for t in blocks),
                               sum(t.seconds for t in blocks), [v for t in warm + blocks for v in t.losses],
                               sum(t.seconds for t in warm) + sum(t.warmup_seconds for t in blocks), None,
                               blocks[-1].settings)
                if best is None:
                    r.note = "kept"
                else:
                    reference = statistics.median(best_rates)  # the best settings so far, timed in turns with this row
                    ratio = r.images_per_second / reference
                    r.note = (f"kept: +{ratio - 1:.0%} vs the best so far ({reference:,.0f} images/s in turns)"
                              if ratio > 1 else f"dropped: {1 - ratio:.0%} slower than the best so far "
                                                f"({reference:,.0f} images/s in turns)")
                if best is None or r.note.startswith("kept"):
                    kept, best = settings, candidate
                if r.warmup_seconds > 5:
                    r.note += f" (warm-up {r.warmup_seconds:.0f} s)"
                results[name] = r
        if verbose:
            r = results[name]
            print(f"{name:34s} " + (f"{r.images_per_second:8,.0f} images/s  {r.note}" if isinstance(r, Throughput)
                                    else r), flush=True)
        if on_row is not None:
            on_row(name, results[name])
    return results, kept


LADDER_OPTIONS = ("batch_size", "channels_last", "amp", "fused", "compile", "optimizer")
# The ladder's first rung: fit's step with every speed option off (float32, NCHW, a plain Adam
# as the seeds use), so each later row adds exactly one change.
PLAIN_STEP = {"optimizer": "adam", "amp": False, "channels_last": False, "fused": False, "compile": False}


def ladder_changes(on_cuda: bool, seed_batch: int = 64, larger_batches: Sequence[int] = (256,),
                   compile: bool | str = True) -> list[tuple[str, dict | str]]:
    """Return the ladder's rungs: the article's batch, larger batches, then each recommended setting in turn.

    fp16 with a gradient scaler is a CUDA recipe, so off CUDA its rung is a string saying why;
    ``compile`` may be a string too (why torch.compile is left out of this run).
    """
    changes: list[tuple[str, dict | str]] = [(f"uint8 on the device, batch {seed_batch}", {"batch_size": seed_batch})]
    changes += [(f"+ larger batch ({b})", {"batch_size": b}) for b in larger_batches]
    changes += [("+ channels_last", {"channels_last": True}), ("+ bf16 autocast", {"amp": "bf16"}),
                ("+ fp16 autocast + GradScaler", {"amp": "fp16"} if on_cuda else
                 "n/a on CPU: fp16 autocast with a GradScaler is a CUDA recipe (CPUs use bf16)"),
                ("+ fused Adam", {"fused": True}),
                ("+ torch.compile", compile if isinstance(compile, str) else {"compile": True} if compile
                 else "not asked for in this run")]
    return changes


def improvement_ladder(build_model, data: ImageData, changes: Sequence[tuple[str, dict | str]], *,
                       images_per_repeat: int = 1024, warmup: int = 2, repeats: int = 3,
                       device: torch.device | str | None = None, lr: float = 1e-3, seed: int = 0,
                       verbose: bool = True, on_row: Callable[[str, Throughput | str], None] | None = None
                       ) -> tuple[dict[str, Throughput | str], dict]:
    """Run `climb_ladder` over `TrainStep`'s options (fit's step); return results and the kept settings.

    ``changes`` is a list of (name, settings) where settings holds some of batch_size,
    channels_last, amp, fused, compile, optimizer (the first must give batch_size), or a
    string saying why the change does not apply here. Rungs start from `PLAIN_STEP`. Each
    candidate is a fresh ``build_model()`` under the same seed, trained on ``data`` as resident
    uint8 batches (`TimedSteps`): ``warmup`` untimed steps, then timed blocks of about
    ``images_per_repeat`` images, in turns with the best settings so far (see `climb_ladder`).
    """
    device = torch.device(device) if device is not None else get_device()
    for _, change in changes:
        unknown = set(change) - set(LADDER_OPTIONS) if isinstance(change, dict) else set()
        if unknown:
            raise CourseError(f"Unknown setting(s) {sorted(unknown)}; choose from {', '.join(LADDER_OPTIONS)}.")
    first = next((change for _, change in changes if isinstance(change, dict)), None)
    if first is not None and "batch_size" not in first:
        raise CourseError("The first change of a ladder must set batch_size.")

    def start(settings: dict) -> Callable[[], Throughput]:
        bs = settings["batch_size"]
        steps = max(2, images_per_repeat // bs)
        torch.manual_seed(seed)
        options = {**PLAIN_STEP, **{k: v for k, v in settings.items() if k != "batch_size"}}
        runner = TimedSteps(build_model(), data, bs, device=device, lr=lr, seed=seed, **options)
        warmup_seconds = [runner.run(warmup) if warmup else 0.0]  # counted once, by the first timed block
        read = [0]  # losses already handed out

        def block() -> Throughput:
            seconds = runner.run(steps)
            losses = runner.loss_values()
            new, read[0] = losses[read[0]:], len(losses)
            rate = steps * bs / seconds
            spent, warmup_seconds[0] = warmup_seconds[0], 0.0
            return Throughput(rate, [rate], bs, steps * bs, seconds, new, spent, None, runner.settings)

        return block

    return climb_ladder(changes, start, repeats=repeats, warmup=0, verbose=verbose, on_row=on_row)


# --------------------------------------------------------------------------- GPU memory
def peak_memory_by_batch_size(model: nn.Module, image_shape: Sequence[int], batch_sizes: Sequence[int], *,
                              device: torch.device | str | None = None, amp: bool | str = False,
                              channels_last: bool = False) -> dict[int, float | None] | None:
    """Return the peak GPU memory (MiB) of one training step per batch size; None when not on CUDA.

    The step is `TrainStep` with Adam. A batch size that runs out of memory maps to None and
    larger ones are not tried.
    """
    device = torch.device(device) if device is not None else get_device()
    if device.type != "cuda":
        return None
    step = TrainStep(copy.deepcopy(model), device=device, lr=1e-3, optimizer="adam", amp=amp,
                     channels_last=channels_last, fused=False)
    step.model.train()
    result: dict[int, float | None] = {}
    for bs in sorted(batch_sizes):
        failed = False
        try:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            x = torch.rand(bs, *image_shape, device=device)
            if step.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            step(x)
            torch.cuda.synchronize(device)
            result[bs] = torch.cuda.max_memory_allocated(device) / 2**20
            del x
        except OutOfMemoryError:
            failed = True  # clean up outside the except block: the traceback holds the tensors
        if failed:
            step.optimizer.zero_grad(set_to_none=True)
            gc.collect()
            torch.cuda.empty_cache()
            result[bs] = None
            break
    del step
    gc.collect()
    torch.cuda.empty_cache()
    return result


# --------------------------------------------------------------------------- stored GPU numbers
GPU_RESULTS_FILE = "gpu_suite.json"  # what benchmarks/gpu_suite.py writes (benchmarks/results/ in the repository)


@dataclasses.dataclass
class GpuResults:
    """A stored run of ``benchmarks/gpu_suite.py``: where it ran, its speed ladder and its memory by batch size."""

    header: dict  # card, driver, cuda, torch, date, machine
    ladder: "pandas.DataFrame"  # one row per setup: batch, images/s, x the article's loop, status, note
    target: dict  # the best setting against the article's loop: ratio, target, verdict
    path: Path
    memory: "pandas.DataFrame"  # peak MiB of one training step: one row per batch size, one column per model


def _gpu_results_candidates() -> list[Path]:
    """Return where a stored results file may be: shipped with the package, then the repository's results folder."""
    package = Path(__file__).resolve().parent.parent
    return [package / "pretrained" / GPU_RESULTS_FILE, package.parent / "benchmarks" / "results" / GPU_RESULTS_FILE]


def gpu_results(path: str | Path | None = None) -> GpuResults | None:
    """Return the header, speed ladder and memory table of a stored GPU suite run; None when none is stored.

    ``path`` names the file; by default the package's copy, then the repository's
    ``benchmarks/results/gpu_suite.json``. Rows the run skipped keep their reason in ``note``.
    """
    import pandas as pd

    if path is not None:
        found = Path(path)
        if not found.is_file():
            raise CourseError(f"No GPU suite results at {found}. Run benchmarks/gpu_suite.py (see "
                              "benchmarks/README.md, 'GPU suite') or leave path=None for the stored file.")
    else:
        found = next((p for p in _gpu_results_candidates() if p.is_file()), None)
        if found is None:
            return None
    try:
        run = json.loads(found.read_text())
        part = run["parts"]["ladder"]
        header = {k: run["header"].get(k) for k in ("card", "driver", "cuda", "torch", "date", "machine", "device")}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CourseError(f"{found} is not a results file of benchmarks/gpu_suite.py ({type(e).__name__}: {e}). "
                          "Run the suite again to rewrite it.") from e
    target = part.get("target") or {}
    base = target.get("baseline_images_per_second")
    rows = []
    for r in part.get("rows", []):
        rate = r.get("images_per_second")
        rows.append({"setup": r["setup"], "batch": r.get("batch_size"),
                     "images/s": round(rate) if rate is not None else None,
                     "x article's loop": round(rate / base, 2) if rate is not None and base else None,
                     "status": r["status"], "note": r.get("note") or r.get("reason") or ""})
    ladder = pd.DataFrame(rows, columns=["setup", "batch", "images/s", "x article's loop", "status", "note"])
    ladder = ladder.set_index("setup")
    for column in ("batch", "images/s"):
        ladder[column] = ladder[column].astype("Int64")
    measured = [r for r in run["parts"].get("memory", {}).get("rows", []) if r.get("status") == "measured"]
    memory = pd.DataFrame([{"model": r["model"], "batch": r["batch_size"], "peak MiB": round(r["peak_mib"])}
                           for r in measured], columns=["model", "batch", "peak MiB"])
    memory = memory.pivot(index="batch", columns="model", values="peak MiB") if measured else memory
    return GpuResults(header, ladder, dict(target), found, memory)


def gpu_ladder_lessons(stored: GpuResults, here: dict[str, Throughput | str] | None = None) -> list[str]:
    """Return what a stored GPU ladder shows, one line each, computed from its rows (and this run's, if given).

    ``here`` is a ladder measured in this run: its rows named "... larger batch ..." are compared with
    the measured row just before the first of them (the same loop at the smaller batch).
    """
    import pandas as pd

    rows = stored.ladder
    rate = rows["images/s"]
    fit_row = next(name for name in rows.index if name.startswith("cu.fit"))
    base_row = next(name for name in rows.index if name.startswith("uint8 on the device"))
    batch_rows = [name for name in rows.index if name.startswith("+ larger batch") and pd.notna(rate[name])]
    ratio = rows["x article's loop"]
    lines = [f"cu.fit at the article's batch size: {ratio[fit_row]:.2f}x the article's loop "
             "(images already on the GPU, the loss read every 50 steps instead of every step)."]
    if batch_rows:
        gpu_gain = rate[batch_rows[-1]] / rate[base_row]
        line = (f"Larger batches alone ({rows.loc[base_row, 'batch']} => {rows.loc[batch_rows[-1], 'batch']} images): "
                f"{gpu_gain:.2f}x on the GPU")
        mine = {k: v for k, v in (here or {}).items() if isinstance(v, Throughput)}
        names = list(mine)  # this run's larger-batch rows, against the measured row just before the first of them
        mine_batches = [k for k in names if "larger batch" in k]
        mine_base = names[names.index(mine_batches[0]) - 1] if mine_batches and names[0] != mine_batches[0] else None
        if mine_batches and mine_base:
            line += (f"; {mine[mine_batches[-1]].images_per_second / mine[mine_base].images_per_second:.2f}x here "
                     f"({mine[mine_base].batch_size} => {mine[mine_batches[-1]].batch_size} images)")
        lines.append(line + ".")
    for name in rows.index[rows.index.get_loc(batch_rows[-1]) + 1 if batch_rows else 0:]:
        if not name.startswith("+ ") or name.startswith("+ larger batch"):
            continue
        lines.append(f"{name}: {rows.loc[name, 'note'] or rows.loc[name, 'status']}.")
    t = stored.target
    if t:
        lines.append(f"Best on that GPU: {t['best']}, {t['ratio']:.2f}x the article's loop "
                     f"({t['best_images_per_second']:,.0f} against {t['baseline_images_per_second']:,.0f} images/s).")
    return lines

