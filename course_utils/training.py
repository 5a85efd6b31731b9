"""`fit`: a fast, resumable training loop for autoencoders, and atomic checkpoints."""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .data import DeviceBatches, ImageData
from .environment import get_device
from .errors import CheckpointError, CourseError, TrainingDivergedError
from .metrics import evaluate, model_value_range

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
                    history: History | None = None) -> Path:
    """Write a checkpoint atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT, "model_class": type(model).__name__, "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer else None,
        "scheduler": scheduler.state_dict() if scheduler else None,
        "scaler": scaler.state_dict() if scaler else None,
        "epoch": epoch, "batch": batch, "step": step, "rng": _rng_state(),
        "config": dict(config or {}), "history": (history if history is not None else History()).state(),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never half of one
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed mid-save
        stale.unlink(missing_ok=True)
    return path


def _describe_mismatch(model: nn.Module, state: dict) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    parts = []
    for label, items in (("missing from the checkpoint", missing), ("not in this model", unexpected),
                         ("shapes differ", shapes)):
        if items:
            parts.append(f"{label}: {', '.join(items[:5])}" + (f" (+{len(items) - 5} more)" if len(items) > 5 else ""))
    return "; ".join(parts)


def load_checkpoint(path: str | Path, model: nn.Module | None = None, optimizer=None, scheduler=None,
                    scaler=None, map_location="cpu") -> dict:
    """Load a checkpoint safely (``weights_only=True``) into the given model and optimizer."""
    path = Path(path)
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
    if model is not None:
        problems = _describe_mismatch(model, payload["model"])
        if problems:
            saved = payload.get("model_class", "an unknown model")
            raise CheckpointError(
                f"Checkpoint {path} was saved from a different architecture ({saved}) than "
                f"{type(model).__name__}: {problems}. Build the same model (same widths, latent and "
                "image size) before loading, or train this one from scratch.")
        model.load_state_dict(payload["model"])
    for obj, key in ((optimizer, "optimizer"), (scheduler, "scheduler"), (scaler, "scaler")):
        if obj is not None and payload.get(key) is not None:
            obj.load_state_dict(payload[key])
    return payload


# --------------------------------------------------------------------------- the loop
LOSSES: dict[str, Callable] = {"mse": nn.functional.mse_loss, "l1": nn.functional.l1_loss,
                               "bce": nn.functional.binary_cross_entropy}


def _make_optimizer(name: str, params, lr: float, weight_decay: float, device: torch.device):
    fused = {"fused": True} if device.type == "cuda" else {}
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **fused)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **fused)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise CourseError(f"Unknown optimizer {name!r}; choose 'adamw', 'adam' or 'sgd'.")


def _make_scheduler(name: str | None, optimizer, lr: float, total_steps: int):
    if name is None or name == "none":
        return None
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 2),
                                                   pct_start=0.15)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    raise CourseError(f"Unknown schedule {name!r}; choose 'onecycle', 'cosine' or None.")


def _amp_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    if amp == "auto":
        amp = device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16


def check_model_fits(model: nn.Module, image_shape: tuple[int, ...], device: torch.device) -> None:
    """Raise one clear CourseError if ``model`` cannot reconstruct images of ``image_shape``."""
    x = torch.zeros(1, *image_shape, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            y = model(x)
    except CourseError:
        raise
    except RuntimeError as e:
        raise CourseError(f"{type(model).__name__} cannot take images of shape {tuple(image_shape)}: "
                          f"{str(e).splitlines()[0]}. Resize the data (load_dataset(..., image_size=...)) "
                          "or build the model for this size.") from e
    finally:
        model.train(was_training)
    if tuple(y.shape[1:]) != tuple(image_shape):
        raise CourseError(f"{type(model).__name__} turns images of {tuple(image_shape)} into "
                          f"{tuple(y.shape[1:])}: an autoencoder must give back the input's shape. Check "
                          "the decoder's strides, paddings and output_padding (chapter 03).")


def fit(model: nn.Module, train: ImageData | torch.Tensor | Iterable, val: ImageData | None = None, *,
        epochs: int = 1, batch_size: int = 128, lr: float = 2e-3, optimizer: str = "adamw",
        weight_decay: float = 0.0, schedule: str | None = "onecycle", loss: str | Callable = "mse",
        value_range: tuple[float, float] | None = None, device: torch.device | str | None = None,
        amp: bool | str = "auto", channels_last: bool | str = "auto", compile: bool = False,
        checkpoint: str | Path | None = None, checkpoint_every: int | None = None, resume: bool = False,
        seed: int = 0, progress: bool = True, check_every: int = 50, max_grad_norm: float | None = None,
        stop_after_steps: int | None = None, desc: str | None = None) -> History:
    """Train an autoencoder to reconstruct its input; return the per-epoch History.

    ``train`` is ImageData (fast path: uint8 on the device, shuffled there) or any iterable of
    float batches (``x`` or ``(x, label)``, e.g. a DataLoader). With ``checkpoint`` set, the run
    is saved atomically at every epoch end (and every ``checkpoint_every`` steps); with
    ``resume=True`` it continues from that file, replaying the same batch order.
    """
    from tqdm.auto import tqdm

    device = torch.device(device) if device is not None else get_device()
    value_range = tuple(value_range or model_value_range(model))
    if epochs <= 0:
        raise CourseError(f"epochs must be positive, got {epochs}.")
    if lr <= 0 or not math.isfinite(lr):
        raise CourseError(f"The learning rate must be a positive number, got {lr}.")
    if channels_last == "auto":
        channels_last = device.type == "cuda"
    loss_fn = LOSSES.get(loss) if isinstance(loss, str) else loss
    if loss_fn is None:
        raise CourseError(f"Unknown loss {loss!r}; choose one of {', '.join(LOSSES)} or pass a function.")

    fast = isinstance(train, (ImageData, torch.Tensor))
    if fast:
        batches = DeviceBatches(train, batch_size, device, shuffle=True, value_range=value_range,
                                drop_last=len(train) >= 2 * batch_size, seed=seed, channels_last=channels_last)
        image_shape = tuple(batches.images.shape[1:])
        n_batches = len(batches)
    else:
        n_batches = len(train)  # type: ignore[arg-type]
        first = next(iter(train))  # type: ignore[call-overload]
        image_shape = tuple((first[0] if isinstance(first, (list, tuple)) else first).shape[1:])

    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    check_model_fits(model, image_shape, device)
    opt = _make_optimizer(optimizer, model.parameters(), lr, weight_decay, device)
    sched = _make_scheduler(schedule, opt, lr, epochs * n_batches)
    amp_dtype = _amp_dtype(amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    config = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "optimizer": optimizer,
              "weight_decay": weight_decay, "schedule": schedule, "seed": seed, "value_range": list(value_range),
              "loss": loss if isinstance(loss, str) else getattr(loss, "__name__", "custom"),
              "model": type(model).__name__, "images": n_batches * batch_size}

    history, start_epoch, start_batch, step = History(), 0, 0, 0
    if resume and checkpoint is not None and Path(checkpoint).is_file():
        state = load_checkpoint(checkpoint, model, opt, sched, scaler, map_location=device)
        start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
        history = History(state["history"]["records"], state["history"]["step_losses"])
        _set_rng_state(state["rng"])
        if not fast and start_batch:
            raise CourseError("Resuming mid-epoch needs ImageData as training data (a DataLoader cannot "
                              "replay its order); save only at epoch ends (checkpoint_every=None).")
        if progress:
            print(f"Resuming from {checkpoint}: epoch {start_epoch + 1}, batch {start_batch}, step {step}.")

    run_model = torch.compile(model) if compile else model
    autocast = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else contextlib.nullcontext

    def train_step(x: torch.Tensor) -> torch.Tensor:
        with autocast():
            out = run_model(x)
        batch_loss = loss_fn(out.float(), x)
        opt.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(batch_loss).backward()
            scaler.unscale_(opt)
        else:
            batch_loss.backward()
        if max_grad_norm is not None:
            nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        if sched is not None:
            sched.step()
        return batch_loss.detach()

    bar = tqdm(total=epochs * n_batches, initial=start_epoch * n_batches + start_batch, disable=not progress,
               desc=desc or type(model).__name__, unit="batch", leave=True)
    model.train()
    try:
        for epoch in range(start_epoch, epochs):
            first_batch = start_batch if epoch == start_epoch else 0
            epoch_first_step = step - first_batch
            losses = torch.zeros(n_batches, device=device)  # filled on the device: no sync per step
            checked, seen = first_batch, 0
            t0 = time.perf_counter()
            source = batches.batches(epoch, first_batch) if fast else train
            for b, x in enumerate(source, start=first_batch):
                if not fast:
                    x = (x[0] if isinstance(x, (list, tuple)) else x).to(device, non_blocking=True)
                losses[b] = train_step(x)
                seen += x.shape[0]
                step += 1
                bar.update(1)
                due_ckpt = checkpoint is not None and checkpoint_every and step % checkpoint_every == 0
                if b + 1 - checked >= check_every or due_ckpt or b + 1 == n_batches:
                    chunk = losses[checked:b + 1].cpu()  # one host sync per check, not per step
                    _raise_if_diverged(chunk, epoch, checked, epoch_first_step, n_batches, lr)
                    history.step_losses.extend(chunk.tolist())
                    checked = b + 1
                    rate = seen / max(time.perf_counter() - t0, 1e-9)
                    bar.set_postfix(epoch=epoch + 1, loss=f"{float(chunk.mean()):.4g}", img_s=f"{rate:,.0f}")
                if due_ckpt and b + 1 < n_batches:
                    save_checkpoint(checkpoint, model, opt, sched, scaler, epoch, b + 1, step, config, history)
                if stop_after_steps is not None and step >= stop_after_steps and b + 1 < n_batches:
                    history.step_losses.extend(losses[checked:b + 1].cpu().tolist())  # not yet checked
                    return history  # (at an epoch's last batch, finish the epoch's record and save first)
            seconds = time.perf_counter() - t0
            epoch_losses = history.step_losses[epoch_first_step:]
            record = {"epoch": epoch + 1, "train_loss": float(np.mean(epoch_losses)), "seconds": seconds,
                      "images_per_second": seen / max(seconds, 1e-9), "lr": opt.param_groups[0]["lr"]}
            if val is not None:
                scores = evaluate(model, val, device=device, ssim=False)
                record.update(val_mse=scores["mse"], val_psnr=scores["psnr"])
                model.train()
            history.records.append(record)
            if checkpoint is not None:
                save_checkpoint(checkpoint, model, opt, sched, scaler, epoch + 1, 0, step, config, history)
            if stop_after_steps is not None and step >= stop_after_steps:
                return history
    finally:
        bar.close()
    return history


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
                   progress: bool = True) -> History:
    """Train a classifier with cross-entropy on labelled images; return per-epoch loss and accuracy."""
    from tqdm.auto import tqdm
    from .metrics import accuracy

    device = torch.device(device) if device is not None else get_device()
    model.to(device).train()
    batches = DeviceBatches(train, batch_size, device, seed=seed, with_labels=True)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(epochs * len(batches), 2))
    history = History()
    with tqdm(total=epochs * len(batches), desc=type(model).__name__, disable=not progress) as bar:
        for epoch in range(epochs):
            losses = torch.zeros(len(batches), device=device)
            t0 = time.perf_counter()
            for b, (x, y) in enumerate(batches.batches(epoch)):
                loss = nn.functional.cross_entropy(model(x), y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                losses[b] = loss.detach()
                bar.update(1)
            epoch_losses = losses.cpu()
            _raise_if_diverged(epoch_losses, epoch, 0, epoch * len(batches), len(batches), lr)
            history.step_losses.extend(epoch_losses.tolist())
            record = {"epoch": epoch + 1, "train_loss": float(epoch_losses.mean()),
                      "seconds": time.perf_counter() - t0}
            if test is not None:
                record["test_accuracy"] = accuracy(model, test)
                model.train()
            history.records.append(record)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record.get('test_accuracy', 0):.3f}")
    return history
