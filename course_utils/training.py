"""`fit`: the resumable training loop around `TrainStep`, `fit_classifier`, and atomic checkpoints.

`fit` trains alone or, launched by ``torchrun``, as one of several data-parallel processes
(chapter 10): the same loop and the same `TrainStep`, with each process taking its own slice of
every global batch, gradients averaged by `DistributedDataParallel`, and only rank 0 showing
progress and writing the checkpoint that every rank resumes from.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import gc
import math
import random
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from .data import DeviceBatches, ImageData, UInt8Images, to_float
from .engine import (DataParallel, TrainStep, all_reduce_mean, check_model_fits, join_data_parallel,
                     resolve_channels_last)
from .environment import get_device
from .errors import CheckpointError, CourseError, LearnedNothingWarning, TrainingDivergedError
from .files import atomic_write
from .metrics import evaluate, model_value_range
from .models import RECOMMENDED_TRAINING

CHECKPOINT_FORMAT = 1


@dataclasses.dataclass
class History:
    """What `fit` measured: one record per epoch, plus every step's training loss."""

    records: list[dict] = dataclasses.field(default_factory=list)
    step_losses: list[float] = dataclasses.field(default_factory=list)

    def __getitem__(self, key: str) -> list:
        return [r[key] for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict:
        """Return the last epoch's record."""
        return self.records[-1]

    def frame(self):
        """Return the per-epoch records as a pandas DataFrame."""
        import pandas as pd
        return pd.DataFrame(self.records)

    def state(self) -> dict:
        return {"records": self.records, "step_losses": self.step_losses}


# --------------------------------------------------------------------------- checkpoints
def _rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, model: nn.Module, optimizer=None, scheduler=None, scaler=None,
                    epoch: int = 0, batch: int = 0, step: int = 0, config: dict | None = None,
                    history: History | None = None, rank_rng: list[dict] | None = None) -> Path:
    """Write a checkpoint atomically: a temporary file in the same folder, then a rename.

    ``rank_rng``: in a data-parallel run, every process's random-number state, by rank (rank 0
    writes the file), so each process resumes with its own.
    """
    path = Path(path)
    payload = {
        "format": CHECKPOINT_FORMAT, "model_class": type(model).__name__, "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "scaler": scaler.state_dict() if scaler else None,
        "epoch": epoch, "batch": batch, "step": step, "rng": _rng_state(),
        "config": dict(config or {}), "history": (history if history is not None else History()).state(),
    }
    if rank_rng is not None:
        payload["rank_rng"] = rank_rng
    try:
        with atomic_write(path) as f:  # readers see the old checkpoint or the new one, never half of one
            torch.save(payload, f)
    except (OSError, RuntimeError) as e:
        _raise_if_disk_full(e, path, payload)
        raise
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed mid-save
        stale.unlink(missing_ok=True)
    return path


def _raise_if_disk_full(error: Exception, path: Path, payload: dict) -> None:
    """Turn a failed save on a full disk (torch reports it as 'unexpected pos') into one clear error."""
    needed = sum(t.numel() * t.element_size() for t in _tensors(payload))
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        return
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or free < needed + 2**20:
        previous = (f"The previous checkpoint at {path} is intact." if path.is_file() else
                    f"No earlier checkpoint exists at {path}.")
        raise CheckpointError(
            f"The disk holding {path.parent} is full ({free / 2**20:.1f} MiB free; this checkpoint needs about "
            f"{needed / 2**20:.1f} MiB), so the checkpoint was not written. {previous} Free some space (old "
            "checkpoints, the pip cache) or pass checkpoint= a path on another disk, then resume.") from error


def _tensors(obj) -> Iterator[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def check_checkpoint_path(path: str | Path) -> Path:
    """Raise CheckpointError now, before any training, if a checkpoint cannot be written at ``path``."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint={str(path)!r} is a folder; give a file path in it, e.g. "
                              f"checkpoint={str(path / 'run.pt')!r}.")
    blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise CheckpointError(f"Cannot write checkpoint {path}: {blocker} is a file, not a folder. Choose "
                              "another path (e.g. checkpoints/run.pt) or move that file away.")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise CheckpointError(f"Cannot write checkpoint {path}: {path.parent} is not writable by this user "
                              f"({e.strerror}). Choose a folder you own (e.g. checkpoints/run.pt) or fix its "
                              "permissions.") from e
    return path


def _describe_mismatch(model: nn.Module, state: dict, shown: int = 3) -> str:
    """Return how ``state`` (a saved state dict) differs from ``model``'s, at most ``shown`` differences; "" if none."""
    own = model.state_dict()
    # shapes first: a model of the same class built with other sizes differs only there, and they say which sizes
    found = [(k, f"{k}: saved {tuple(state[k].shape)}, this model {tuple(own[k].shape)}")
             for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    found += [(k, f"{k}: only in this model") for k in own if k not in state]
    found += [(k, f"{k}: only in the checkpoint") for k in state if k not in own]
    layers = {}  # one difference per layer: its bias differs whenever its weight does
    for k, text in found:
        layers.setdefault(k.rsplit(".", 1)[0], text)
    shown_texts = list(layers.values())[:shown]
    more = f" (and {len(found) - len(shown_texts)} more)" if len(found) > len(shown_texts) else ""
    return "; ".join(shown_texts) + more


def load_checkpoint(path: str | Path, model: nn.Module | None = None, optimizer=None, scheduler=None,
                    scaler=None, map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``) into the given model and optimizer."""
    payload = _read_checkpoint(Path(path), map_location)
    _apply_checkpoint(payload, Path(path), model, optimizer, scheduler, scaler)
    return payload


def _read_checkpoint(path: Path, map_location) -> dict:
    if not path.is_file():
        raise CheckpointError(f"No checkpoint at {path}. Train first with fit(..., checkpoint='{path}'), "
                              "or check the path (relative paths start at the notebook's folder).")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"Checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}). "
                              "It may be from an incompatible version or damaged; train again.") from e
    if not isinstance(payload, dict) or "model" not in payload:
        payload = {"format": 0, "model": payload}  # a bare state_dict
    if payload.get("format", 0) > CHECKPOINT_FORMAT:
        raise CheckpointError(f"Checkpoint {path} has format {payload['format']}, newer than this "
                              f"course_utils understands ({CHECKPOINT_FORMAT}). Upgrade course_utils.")
    return payload


def _apply_checkpoint(payload: dict, path: Path, model=None, optimizer=None, scheduler=None, scaler=None) -> None:
    if model is not None:
        problems = _describe_mismatch(model, payload["model"])
        if problems:
            saved, this = payload.get("model_class", "unknown"), type(model).__name__
            what = f"both {this}, of other sizes" if saved == this else f"saved: {saved}, this model: {this}"
            raise CheckpointError(
                f"Checkpoint {path} was saved from a different architecture ({what}): {problems}. Build the "
                f"model with the same settings as the saved run ({saved} with the same code size, widths, channels "
                "and image size) before loading it, or, to train this model from scratch, give fit a new "
                "checkpoint path.")
        model.load_state_dict(payload["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None and payload.get(key) is not None:
            obj.load_state_dict(payload[key])


# --------------------------------------------------------------------------- the recipe
_STEP_SETTINGS = ("lr", "optimizer", "weight_decay", "schedule", "loss", "amp", "channels_last", "fused", "compile",
                  "max_grad_norm", "input_transform", "sync_batchnorm")


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Say how to train, every setting in one place (airbench's hyperparameter dict): `fit` takes one.

    ``Recipe(**RECOMMENDED_TRAINING, epochs=4)`` is the course's recommended recipe for 4 epochs;
    ``recipe.replace(lr=1e-3)`` a copy with one change. ``input_transform`` corrupts the inputs only
    (denoising: the target stays clean); ``augment`` changes each batch, input and target alike (e.g.
    `flip_half`); ``amp``, ``channels_last`` and ``fused`` default to what is fast on the device.
    """

    epochs: int = 1
    batch_size: int = 128
    lr: float = 2e-3
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    schedule: str | None = "onecycle"
    loss: str | Callable = "mse"
    max_grad_norm: float | None = None
    input_transform: Callable | None = None
    augment: Callable | None = None
    seed: int = 0
    amp: bool | str = "auto"
    channels_last: bool | str = "auto"
    fused: bool | str = "auto"
    compile: bool = False
    sync_batchnorm: bool = False

    def replace(self, **changes) -> Recipe:
        """Return a copy with ``changes``; an unknown setting is a CourseError that lists the known ones."""
        known = [field.name for field in dataclasses.fields(self)]
        unknown = sorted(set(changes) - set(known))
        if unknown:
            raise CourseError(f"Unknown training setting(s) {', '.join(map(repr, unknown))}: a recipe has "
                              f"{', '.join(known)}. Check the spelling (fit's other arguments are value_range, "
                              f"device, checkpoint, checkpoint_every, resume, progress, check_every, "
                              f"stop_after_steps and desc).")
        return dataclasses.replace(self, **changes) if changes else self

    def step_settings(self) -> dict:
        """Return the settings `TrainStep` takes (everything but epochs, batch size, augmentation and seed)."""
        return {name: getattr(self, name) for name in _STEP_SETTINGS}


# --------------------------------------------------------------------------- the loop
def sharded_loader(data: ImageData | np.ndarray | Dataset, batch_size: int, *, workers: int = 2, seed: int = 0,
                   device: torch.device | str | None = None) -> DataLoader:
    """Return a DataLoader giving this process its share of each global batch of ``batch_size`` uint8 images.

    A `DistributedSampler` (shuffled with ``seed``; `fit` calls its ``set_epoch`` every epoch, so
    every rank draws the same new order each epoch) gives process r of W the images
    r, r + W, r + 2W, ... of that order, ``batch_size / W`` at a time; ``workers`` processes
    read and collate the next batches while the model trains, and on a GPU the batches land in
    pinned (page-locked) memory so the copy to the device runs in the background. Alone (no
    torchrun) it is the same loader with W = 1.
    """
    dp = join_data_parallel(device)
    if batch_size % dp.world_size:
        raise CourseError(f"batch_size={batch_size} is the global batch, split evenly over the {dp.world_size} "
                          f"processes, so it must be a multiple of {dp.world_size}.")
    dataset = data if isinstance(data, Dataset) else UInt8Images(data)
    sampler = DistributedSampler(dataset, num_replicas=dp.world_size, rank=dp.rank, shuffle=True, seed=seed,
                                 drop_last=True)
    return DataLoader(dataset, batch_size=batch_size // dp.world_size, sampler=sampler, drop_last=True,
                      num_workers=workers, pin_memory=dp.device.type == "cuda", persistent_workers=workers > 0)


def _peek(loader: Iterable):
    """Return the first batch of ``loader`` without changing the order its epochs will draw.

    Starting an iteration over a shuffling DataLoader draws from its random generator (or, without
    one, from torch's global one), so a plain ``next(iter(loader))`` would make fit's first epoch
    see the second order a learner's own loop over the same loader would see.
    """
    generators = [g for g in (getattr(loader, "generator", None),
                              getattr(getattr(loader, "sampler", None), "generator", None)) if g is not None]
    states = [g.get_state() for g in generators]
    global_state = torch.get_rng_state()
    try:
        return next(iter(loader))
    finally:
        for g, state in zip(generators, states):
            g.set_state(state)
        torch.set_rng_state(global_state)


class _Batches:
    """fit's training data: ImageData kept on the device as uint8 (replayable), or any iterable of batches.

    In a data-parallel run of W processes, ``batch_size`` is the global batch B. Every process
    keeps the uint8 images resident on its device and draws the same order for each epoch (a
    permutation seeded by (seed, epoch): identical on every rank, the same in every run);
    process r takes images r*B/W to (r+1)*B/W of each global batch, so over an epoch each rank
    trains on its own shard, a different one every epoch. A DataLoader must hand each process
    its own share through a DistributedSampler; fit calls its ``set_epoch`` every epoch.
    """

    def __init__(self, train, batch_size: int, device: torch.device, value_range, seed: int, channels_last: bool,
                 dp: DataParallel):
        self.device, self.replayable = device, isinstance(train, (ImageData, torch.Tensor))
        self.value_range, self.channels_last, self.dp = value_range, channels_last, dp
        if dp.active and batch_size % dp.world_size:
            fits = max(dp.world_size, batch_size // dp.world_size * dp.world_size)
            raise CourseError(
                f"batch_size={batch_size} is the global batch, split evenly over the {dp.world_size} processes, "
                f"so it must be a multiple of {dp.world_size}: use e.g. batch_size={fits}.")
        if self.replayable:
            self.source = DeviceBatches(train, batch_size, device, shuffle=True, value_range=value_range,
                                        drop_last=dp.active or len(train) >= 2 * batch_size, seed=seed,
                                        channels_last=channels_last)
            self.image_shape = tuple(self.source.images.shape[1:])
            self.per_rank = batch_size // dp.world_size
        else:  # e.g. a DataLoader of float images, or of (images, labels), or of uint8 images
            sampler = getattr(train, "sampler", None)
            if dp.active and not isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
                raise CourseError(
                    f"Under torchrun each of the {dp.world_size} processes must read its own share of the data, "
                    "but this DataLoader gives every process all of it. Build it with "
                    "sampler=torch.utils.data.distributed.DistributedSampler(dataset) (e.g. "
                    "cu.sharded_loader), or pass ImageData to fit.")
            self.source = train
            first = _peek(train)
            self.sample = first[0] if isinstance(first, (list, tuple)) else first  # for mean_image_loss
            self.image_shape = tuple(self.sample.shape[1:])
        self.count = len(self.source)

    @torch.no_grad()
    def mean_image_loss(self, limit: int = 2048, chunk: int = 256) -> float:
        """Return the MSE of always predicting the per-pixel mean image, over at most ``limit`` training images.

        ImageData: ``limit`` images spread evenly over the set; a DataLoader: its first batch. In the
        model's value range, as the training batches are.
        """
        images = self.source.images if self.replayable else self.sample
        if len(images) > limit:  # evenly spread, drawing no random numbers: a resumed run replays the same ones
            images = images[torch.linspace(0, len(images) - 1, limit, device=images.device).long()]
        parts = range(0, len(images), chunk)  # in chunks: 2,048 large colour images as floats would not be cheap
        mean = sum(to_float(images[i:i + chunk], self.value_range).sum(0) for i in parts) / len(images)
        squares = sum(float((to_float(images[i:i + chunk], self.value_range) - mean).square().sum()) for i in parts)
        return squares / images.numel()

    def epoch(self, epoch: int, start: int = 0) -> Iterator[torch.Tensor]:
        """Yield the float batches of ``epoch`` on the device, from batch ``start`` on (this process's slices)."""
        if self.replayable and not self.dp.active:
            yield from self.source.batches(epoch, start)
            return
        if self.replayable:
            order, size, rank = self.source.order(epoch), self.source.batch_size, self.dp.rank
            for b in range(start, self.count):
                first = b * size + rank * self.per_rank
                yield self._decode(self.source.images[order[first:first + self.per_rank]])
            return
        sampler = getattr(self.source, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank
        for x in self.source:
            x = (x[0] if isinstance(x, (list, tuple)) else x).to(self.device, non_blocking=True)
            yield self._decode(x) if x.dtype == torch.uint8 else x

    def _decode(self, images: torch.Tensor) -> torch.Tensor:
        """Turn uint8 images already on the device into the float batch the model takes."""
        x = to_float(images, self.value_range)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


class _EpochLosses:
    """One epoch's step losses, kept on the device and read (and checked for NaN) every few steps."""

    def __init__(self, count: int, first_batch: int, epoch: int, first_step: int, history: History,
                 lr: float, device: torch.device):
        self.values = torch.zeros(count, device=device)  # filled on the device: no host sync per step
        self.checked, self.epoch, self.first_step, self.history, self.lr = first_batch, epoch, first_step, history, lr

    def check(self, upto: int) -> float:
        """Read losses up to batch ``upto`` (one host sync), stop if any is not finite; return their mean.

        In a data-parallel run each loss is first averaged over the processes (one all-reduce): the
        global batch's loss, the same on every rank, so every rank stops together on a NaN.
        """
        chunk = all_reduce_mean(self.values[self.checked:upto]).cpu()
        _raise_if_diverged(chunk, self.epoch, self.checked, self.first_step, len(self.values), self.lr)
        self.history.step_losses.extend(chunk.tolist())
        self.checked = upto
        return float(chunk.mean()) if len(chunk) else float("nan")


def fit(model: nn.Module, train: ImageData | torch.Tensor | Iterable, val: ImageData | None = None,
        recipe: Recipe | None = None, *, value_range: tuple[float, float] | None = None,
        device: torch.device | str | None = None, checkpoint: str | Path | None = None,
        checkpoint_every: int | None = None, resume: bool = False, progress: bool = True, check_every: int = 50,
        stop_after_steps: int | None = None, desc: str | None = None, **settings) -> History:
    """Train an autoencoder to reconstruct its input; return the per-epoch History.

    How to train is one `Recipe` (epochs, batch size, optimizer, schedule, loss, ...); a setting given
    by name overrides the recipe's (``fit(model, train, recipe, epochs=2)``, or no recipe and only
    names: ``fit(model, train, epochs=2, lr=5e-3)``). The other arguments say where and how to run it.
    ``train`` is ImageData (fast path: uint8 on the device, shuffled there) or any iterable of
    float batches (``x`` or ``(x, label)``, e.g. a DataLoader). The step is `TrainStep`'s:
    ``amp``, ``channels_last`` and ``fused`` default to what is fast on this device, and
    ``input_transform`` corrupts the inputs only (denoising); ``augment`` changes each batch,
    input and target alike, before the step (e.g. `flip_half`). With ``checkpoint`` set, the run
    is saved atomically at every epoch end (and every ``checkpoint_every`` steps); with
    ``resume=True`` it continues from that file, replaying the same batch order.

    Launched by ``torchrun --nproc-per-node=N`` (chapter 10), fit joins the run (NCCL on GPUs,
    gloo on the CPU) and trains data-parallel: ``batch_size`` is the global batch, each process
    takes its slice of it, gradients and reported losses are averaged over the processes, only
    rank 0 shows progress and writes the checkpoint, and every rank resumes from it. Every rank
    returns the same History.
    """
    from tqdm.auto import tqdm

    recipe = (recipe or Recipe()).replace(**settings)
    epochs, batch_size, lr, seed, loss, augment = (recipe.epochs, recipe.batch_size, recipe.lr, recipe.seed,
                                                   recipe.loss, recipe.augment)
    if epochs <= 0:
        raise CourseError(f"epochs must be positive, got {epochs}.")
    if lr <= 0 or not math.isfinite(lr):
        raise CourseError(f"The learning rate must be a positive number, got {lr}.")
    dp = join_data_parallel(device)  # alone: rank 0 of 1 on `device` (default: the best one here)
    device = dp.device
    value_range = tuple(value_range or model_value_range(model))
    batches = _Batches(train, batch_size, device, value_range, seed,
                       resolve_channels_last(recipe.channels_last, device), dp)
    step = TrainStep(model, device=device, total_steps=epochs * batches.count, **recipe.step_settings())
    model = step.model
    check_model_fits(model, batches.image_shape, device)
    config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": recipe.optimizer,
              "weight_decay": recipe.weight_decay, "schedule": recipe.schedule, "seed": seed,
              "value_range": list(value_range),
              "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
              "model": type(model).__name__, "images": batches.count * batch_size, "processes": dp.world_size,
              "augment": None if augment is None else getattr(augment, "__name__", "custom")}
    save = _Checkpointer(checkpoint, step, config, dp) if checkpoint is not None else None

    history, start_epoch, start_batch, n_steps = History(), 0, 0, 0
    if resume and checkpoint is not None:
        state = _from_main(dp, lambda: _read_checkpoint(Path(checkpoint), "cpu" if dp.active else device)
                           if Path(checkpoint).is_file() else None)
        if state is not None:
            history, start_epoch, start_batch, n_steps = _resume(checkpoint, state, step, batches, config,
                                                                 progress and dp.is_main, dp)

    bar = tqdm(total=epochs * batches.count, initial=start_epoch * batches.count + start_batch,
               disable=not (progress and dp.is_main), desc=desc or type(model).__name__, unit="batch")
    model.train()
    with bar, _explain_interrupt(save):
        for epoch in range(start_epoch, epochs):
            first = start_batch if epoch == start_epoch else 0
            losses = _EpochLosses(batches.count, first, epoch, n_steps - first, history, lr, device)
            t0, seen = time.perf_counter(), 0
            for b, x in enumerate(batches.epoch(epoch, first), start=first):
                losses.values[b] = step(augment(x) if augment is not None else x)
                seen, n_steps = seen + x.shape[0] * dp.world_size, n_steps + 1  # images of the global batch
                bar.update(1)
                last = b + 1 == batches.count
                save_now = save is not None and checkpoint_every and n_steps % checkpoint_every == 0
                stop_now = stop_after_steps is not None and n_steps >= stop_after_steps
                if b + 1 - losses.checked >= check_every or save_now or stop_now or last:
                    mean = losses.check(b + 1)  # raises TrainingDivergedError on a NaN or inf loss
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{mean:.4g}", img_s=f"{rate:,.0f}")
                if save_now and not last:
                    save(epoch, b + 1, n_steps, history)
                if stop_now and not last:
                    _warn_if_nothing_learned(history, batches, loss, lr, n_steps, dp)
                    return history  # mid-epoch: no epoch record (at an epoch's end, record and save first)
            seconds = time.perf_counter() - t0
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(history.step_losses[n_steps - batches.count:])),
                      "seconds": seconds, "images_per_second": seen / max(seconds, 1e-9), "lr": step.lr}
            if val is not None and dp.is_main:
                scores = evaluate(model, val, device=device, ssim=False)
                record.update(val_mse=scores["mse"], val_psnr=scores["psnr"])
            history.records.append(_from_main(dp, lambda: record))  # rank 0's record, on every rank
            if save is not None:
                save(epoch + 1, 0, n_steps, history)
            if stop_after_steps is not None and n_steps >= stop_after_steps:
                break
    _warn_if_nothing_learned(history, batches, loss, lr, n_steps, dp)
    return history


MIN_STEPS_TO_JUDGE = 50  # fewer steps may not yet beat the mean image even at a good learning rate (a smoke run)


def _warn_if_nothing_learned(history: History, batches: _Batches, loss, lr: float, n_steps: int,
                             dp: DataParallel) -> None:
    """Warn (LearnedNothingWarning) when the run ends no better than always predicting the mean training image.

    A learning rate off by a typo (5e3 for 5e-3) saturates a sigmoid output: the loss stays flat and
    nothing diverges, so nothing else would say so. Judged only after a full epoch of at least
    MIN_STEPS_TO_JUDGE steps and for the MSE loss (the mean image's loss is an MSE), on the last
    quarter of an epoch's steps: the epoch's mean still holds the first steps' losses, which a short
    run that did learn has not left behind.
    """
    mse = loss in ("mse", nn.functional.mse_loss) or (isinstance(loss, nn.MSELoss) and loss.reduction == "mean")
    if not dp.is_main or not history.records or not mse or n_steps < MIN_STEPS_TO_JUDGE:
        return
    recent = history.step_losses[-max(1, batches.count // 4):]
    final, baseline = float(np.mean(recent)), batches.mean_image_loss()
    if final < baseline:
        return
    warnings.warn(LearnedNothingWarning(
        f"The model learned nothing: its training loss at the end ({final:.4g}, the mean of the last {len(recent)} "
        f"step(s)) is no better than {baseline:.4g}, the loss of always predicting the mean training image. "
        f"Likely causes: a learning rate far too high or too low (this run used lr={lr:g}; the recommended "
        f"model trains with lr={RECOMMENDED_TRAINING['lr']:g}, and a typo such as 5e3 for 5e-3 saturates the "
        f"output), too few steps for this model ({n_steps} in all: train on more images or for more epochs), or an output "
        f"stuck at its limits (a saturated sigmoid; the images here are scaled to {list(batches.value_range)})."),
        stacklevel=3)


class _Checkpointer:
    """fit's checkpoint writer: checks the path before any work and remembers what it saved last.

    In a data-parallel run every process calls it at the same steps: the processes' random-number
    states are gathered (one collective) and rank 0 alone writes the file; the model, optimizer
    and schedule are identical on every rank, so rank 0's copy is everyone's.
    """

    def __init__(self, path: str | Path, step: TrainStep, config: dict, dp: DataParallel):
        self.path, self.step, self.config, self.dp = check_checkpoint_path(path), step, config, dp
        self.last: tuple[int, int, int] | None = None  # (epoch, batch, step) of the last save

    def __call__(self, epoch: int, batch: int, n_steps: int, history: History) -> None:
        rank_rng = None
        if self.dp.active:
            import torch.distributed as dist
            rank_rng = [None] * self.dp.world_size
            dist.all_gather_object(rank_rng, _rng_state())
        if self.dp.is_main:
            save_checkpoint(self.path, self.step.model, self.step.optimizer, self.step.scheduler, self.step.scaler,
                            epoch, batch, n_steps, self.config, history, rank_rng=rank_rng)
        self.last = (epoch, batch, n_steps)


def _from_main(dp: DataParallel, compute: Callable):
    """Return ``compute()`` as rank 0 computed it, on every rank (alone: just call it).

    A CourseError raised on rank 0 is raised on every rank, so no process is left waiting.
    """
    if not dp.active:
        return compute()
    import torch.distributed as dist
    box = [None]
    if dp.is_main:
        try:
            box = [("value", compute())]
        except CourseError as e:
            box = [("error", e)]
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "error":
        raise value
    return value


@contextlib.contextmanager
def _explain_interrupt(saver: _Checkpointer | None):
    """On Ctrl-C (Jupyter's stop button), say in one line what survives and how to go on."""
    try:
        yield
    except KeyboardInterrupt:
        if saver is None:
            where = "Nothing was saved: pass checkpoint='checkpoints/run.pt' to fit to be able to resume."
        elif saver.last is None and not saver.path.is_file():
            where = f"No checkpoint was written yet at {saver.path} (the first save comes at the end of an epoch)."
        else:
            done = f" after step {saver.last[2]}" if saver.last else ""
            where = (f"The last checkpoint{done} is at {saver.path}: call fit again with the same arguments "
                     "and resume=True to continue from it.")
        raise KeyboardInterrupt(f"Training stopped by an interrupt. {where}") from None


def _resume(checkpoint: str | Path, state: dict, step: TrainStep, batches: _Batches, config: dict, progress: bool,
            dp: DataParallel):
    """Load the run saved in ``checkpoint`` (read as ``state``) into ``step``; return (history, epoch, batch, step)."""
    saved = state.get("config", {})
    scheduled = config["schedule"] not in (None, "none")  # without a schedule, more epochs simply continue
    fixed = ("batch_size", "lr", "schedule", "images") + (("epochs",) if scheduled else ())
    changed = {k: (saved[k], config[k]) for k in fixed if k in saved and saved[k] != config[k]}
    if changed:  # the schedule was laid out for the saved run: continuing it with other settings is undefined
        what = ", ".join(f"{k} {old} -> {new}" for k, (old, new) in changed.items())
        raise CourseError(
            f"resume=True continues the run saved in {checkpoint} exactly as it was started, but this call "
            f"changes {what}. To resume, repeat the original settings. To train longer, start a new run from "
            f"its weights: cu.load_checkpoint({str(checkpoint)!r}, model), then fit(model, ..., epochs=<more>, "
            "checkpoint=<a new path>) (a fresh learning-rate schedule over the extra epochs).")
    _apply_checkpoint(state, Path(checkpoint), step.model, step.optimizer, step.scheduler, step.scaler)
    if not batches.replayable and state["batch"]:
        raise CourseError("Resuming mid-epoch needs ImageData as training data (a DataLoader cannot "
                          "replay its order); save only at epoch ends (checkpoint_every=None).")
    rank_rng = state.get("rank_rng")
    _set_rng_state(rank_rng[dp.rank] if rank_rng and len(rank_rng) == dp.world_size else state["rng"])
    if progress:
        print(f"Resuming from {checkpoint}: epoch {state['epoch'] + 1}, batch {state['batch']}, step {state['step']}.")
    history = History(state["history"]["records"], state["history"]["step_losses"])
    return history, state["epoch"], state["batch"], state["step"]


def _raise_if_diverged(chunk: torch.Tensor, epoch: int, first_batch: int, epoch_first_step: int,
                       n_batches: int, lr: float) -> None:
    bad = (~torch.isfinite(chunk)).nonzero()
    if len(bad):
        i = int(bad[0])
        batch = first_batch + i
        raise TrainingDivergedError(
            f"The training loss became {float(chunk[i])} at step {epoch_first_step + batch + 1} "
            f"(epoch {epoch + 1}, batch {batch + 1} of {n_batches}). Lower the learning rate "
            f"(e.g. lr={lr / 10:g}), check that inputs are scaled as the model expects, or pass "
            "max_grad_norm=1.0 to clip gradients.")


def fit_classifier(model: nn.Module, train: ImageData, test: ImageData | None = None, *, epochs: int = 1,
                   batch_size: int = 128, lr: float = 2e-3, seed: int = 0, device: torch.device | str | None = None,
                   amp: bool | str = "auto", channels_last: bool | str = "auto", progress: bool = True) -> History:
    """Train a classifier with cross-entropy on labelled images; return per-epoch loss and test accuracy."""
    from tqdm.auto import tqdm
    from .metrics import accuracy

    device = torch.device(device) if device is not None else get_device()
    batches = DeviceBatches(train, batch_size, device, seed=seed, with_labels=True,
                            channels_last=resolve_channels_last(channels_last, device))
    step = TrainStep(model, device=device, lr=lr, schedule="onecycle", total_steps=epochs * len(batches),
                     loss="cross_entropy", amp=amp, channels_last=channels_last)
    history = History()
    model.train()
    with tqdm(total=epochs * len(batches), desc=type(model).__name__, unit="batch", disable=not progress) as bar:
        for epoch in range(epochs):
            losses = _EpochLosses(len(batches), 0, epoch, epoch * len(batches), history, lr, device)
            t0 = time.perf_counter()
            for b, (x, y) in enumerate(batches.batches(epoch)):
                losses.values[b] = step(x, target=y)
                bar.update(1)
            record = {"epoch": epoch + 1, "train_loss": losses.check(len(batches)), "seconds": time.perf_counter() - t0}
            if test is not None:
                record["test_accuracy"] = accuracy(model, test)
            history.records.append(record)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record.get('test_accuracy', 0):.3f}")
    return history


OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def fit_with_batch_fallback(model: nn.Module, train, *, batch_size: int, min_batch_size: int = 1,
                            **fit_kwargs) -> tuple[History, int]:
    """Run `fit`, halving the batch size after each out-of-memory error; return (History, batch size used).

    The model's weights are restored before each retry, so every attempt starts from the
    same point. Raises CourseError when even ``min_batch_size`` does not fit.
    """
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
