"""The training step, written once: `TrainStep` and the choices it makes for each device.

`fit`, `fit_classifier`, chapter 05's speed measurements and every benchmark train through
`TrainStep`, so an option (mixed precision, channels_last, a fused optimizer, gradient
clipping, a learning-rate schedule, an input corruption for denoising, data parallelism over
several processes) means the same thing everywhere. ``"auto"`` settings pick what is measured
to be faster on this device and never a slow emulated path (see `cpu_has_native_bf16`).

Data parallelism (chapter 10): `join_data_parallel` joins the process group that ``torchrun``
describes in the environment (NCCL on CUDA GPUs, gloo on the CPU), and a `TrainStep` built
while one is active wraps its model in `DistributedDataParallel`, which averages the gradients
of all processes in every backward pass.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from .environment import get_device
from .errors import CourseError

# One vocabulary for mixed precision, accepted by fit, TrainStep and the speed tools.
AMP_CHOICES = ("auto", True, False, None, "bf16", "fp16", "none")

LOSSES: dict[str, Callable] = {"mse": nn.functional.mse_loss, "l1": nn.functional.l1_loss,
                               "bce": nn.functional.binary_cross_entropy,
                               "cross_entropy": nn.functional.cross_entropy}


# --------------------------------------------------------------------------- device facts
@functools.lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Return True when this CPU has bfloat16 instructions (AVX512-BF16, AMX or Arm BF16)."""
    probes = [getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None)]
    if any(probe is not None and probe() for probe in probes):
        return True
    try:  # Arm (Linux) lists 'bf16' in its Features line; older torch lacks the probes above
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"^(flags|Features)\s*:.*\b(avx512_bf16|amx_bf16|bf16)\b", flags, re.M) is not None


def fused_optimizer_supported(device: torch.device) -> bool:
    """Return True when Adam/AdamW can run fused (one kernel for all parameters) on ``device``."""
    if device.type == "cuda":
        return True
    if device.type == "cpu":
        major, minor = (int(v) for v in re.findall(r"\d+", torch.__version__)[:2])
        return (major, minor) >= (2, 4)  # CPU fused Adam/AdamW arrived in torch 2.4
    return False


def resolve_amp(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    """Return the autocast dtype that ``amp`` asks for on ``device`` (None: float32 throughout).

    ``"auto"``: bf16 on a CUDA GPU that supports it (else fp16 with a gradient scaler), bf16 on
    a CPU with native bf16 instructions, float32 elsewhere. ``True``: mixed precision even
    where it is emulated. ``"bf16"``/``"fp16"``: that type. ``False``/``None``/``"none"``: off.
    """
    if amp not in AMP_CHOICES:
        raise CourseError(f"amp must be one of {', '.join(map(repr, AMP_CHOICES))}; got {amp!r}.")
    if amp in (False, None, "none"):
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise CourseError("fp16 mixed precision needs a CUDA GPU (it relies on a gradient scaler); "
                              "on this device use amp='bf16', or amp=False for float32.")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp == "auto":
        return torch.bfloat16 if device.type == "cpu" and cpu_has_native_bf16() else None
    return torch.bfloat16  # amp=True off CUDA


def resolve_channels_last(channels_last: bool | str, device: torch.device) -> bool:
    """Return whether to train in channels_last memory format (``"auto"``: on CUDA and CPU)."""
    if channels_last == "auto":
        return device.type in ("cuda", "cpu")  # both run NHWC convolution kernels natively
    return bool(channels_last)


def sync(device: torch.device) -> None:
    """Wait until queued GPU work is done, so a clock read means what it says."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode inside the block and restore its mode afterwards, even on an error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def endless_batches(batches) -> Iterator:
    """Yield DeviceBatches' batches epoch after epoch, forever."""
    epoch = 0
    while True:
        yield from batches.batches(epoch)
        epoch += 1


def check_model_fits(model: nn.Module, image_shape: tuple[int, ...], device: torch.device | str) -> None:
    """Raise one clear CourseError if ``model`` cannot reconstruct images of ``image_shape`` (C, H, W)."""
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))), None)
    channels = image_shape[0]
    if first is not None and first.in_channels != channels:
        names = {1: "grey", 3: "RGB colour"}
        raise CourseError(
            f"{type(model).__name__} takes {first.in_channels}-channel images "
            f"({names.get(first.in_channels, 'other')}), but the data has {channels} channel(s) "
            f"({names.get(channels, 'other')}). Build the model for {channels} channel(s) (e.g. "
            f"recommended_autoencoder({tuple(image_shape)}, ...)), or convert the images: grey to RGB with "
            "images.repeat(1, 3, 1, 1), RGB to grey with images.float().mean(1, keepdim=True).round().byte().")
    x = torch.zeros(1, *image_shape, device=device)
    try:
        with eval_mode(model), torch.no_grad():
            y = model(x)
    except CourseError:
        raise
    except RuntimeError as e:
        raise CourseError(f"{type(model).__name__} cannot take images of shape {tuple(image_shape)}: "
                          f"{str(e).splitlines()[0]}. Resize the data (load_dataset(..., image_size=...)) "
                          "or build the model for this size.") from e
    if tuple(y.shape[1:]) != tuple(image_shape):
        raise CourseError(f"{type(model).__name__} turns images of {tuple(image_shape)} into "
                          f"{tuple(y.shape[1:])}: an autoencoder must give back the input's shape. Check "
                          "the decoder's strides, paddings and output_padding (chapter 03).")


def _import_quietly(module: str) -> None:
    """Import ``module`` with its logger silenced below errors (for import-time warnings that mean nothing here)."""
    import importlib
    import logging
    logger = logging.getLogger(module)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        importlib.import_module(module)
    finally:
        logger.setLevel(level)


# --------------------------------------------------------------------------- data parallelism
COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=10)  # a collective waiting longer than this fails instead of hanging


@dataclasses.dataclass(frozen=True)
class DataParallel:
    """This process's place in a data-parallel run: ``rank`` of ``world_size`` processes, and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str | None  # "nccl" (CUDA GPUs), "gloo" (CPU), or None when training alone

    @property
    def active(self) -> bool:
        """Return True when several processes train together."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Return True on rank 0, the one process that prints progress and writes checkpoints."""
        return self.rank == 0


def _process_group_size() -> int:
    """Return the size of the initialised default process group (1 without one)."""
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank_device(device: torch.device | str | None, local_rank: int) -> torch.device:
    """Return the device of the process with ``local_rank`` on this machine: its own GPU, or the CPU."""
    device = torch.device(device) if device is not None else get_device()
    if device.type == "cuda":
        count = torch.cuda.device_count()
        if local_rank >= count:
            raise CourseError(
                f"Process {local_rank} on this machine needs GPU {local_rank}, but this machine has {count} "
                f"GPU(s): one process per GPU. Launch at most {count} process(es) per machine "
                f"(torchrun --nproc-per-node={max(count, 1)} ...), or train on the CPU (--device cpu).")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise CourseError(f"torch.distributed has no backend for the {device.type!r} device; launch a single "
                          "process there, or train with several processes on the CPU (--device cpu).")
    return device


def join_data_parallel(device: torch.device | str | None = None) -> DataParallel:
    """Join the data-parallel run torchrun started (NCCL on CUDA, gloo on the CPU); alone, return rank 0 of 1.

    torchrun describes the run in each process's environment: ``WORLD_SIZE`` processes in all,
    this one's ``RANK`` among them and its ``LOCAL_RANK`` on this machine, and where rank 0
    listens (``MASTER_ADDR``, ``MASTER_PORT``). A process group initialised before (by you, or
    by an earlier call) is joined as it is. Each process trains on its own device: GPU
    ``LOCAL_RANK`` on a CUDA machine, else the CPU.
    """
    import torch.distributed as dist
    initialised = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialised else int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DataParallel(0, 1, 0, torch.device(device) if device is not None else get_device(), None)
    if not dist.is_available():
        raise CourseError("This PyTorch build has no torch.distributed, so it cannot train with several "
                          "processes. Launch one process (python ..., not torchrun), or install a standard build.")
    rank = dist.get_rank() if initialised else int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    device = rank_device(device, local_rank)
    if not initialised:
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT,
                                **({"device_id": device} if device.type == "cuda" else {}))
    return DataParallel(rank, world, local_rank, device, dist.get_backend())


def finish_data_parallel(exit_code: int | None = 0) -> None:
    """End this process's part in a data-parallel run: wait for every rank, close the group, then exit at once.

    Why not simply return and let Python exit: gloo runs each collective on worker threads of
    its own, and the last one's buffers (tensors, which need the interpreter's lock to be freed)
    can still be released by such a thread while the main thread is already tearing the
    interpreter down. That thread then cannot take the lock, and the process aborts
    ("terminate called without an active exception", SIGABRT) after its work was done, about
    one launch in ten on a busy 2-core machine. So: every rank first waits for the others
    (a rank leaving early is exactly when that race opens), the group is destroyed while the
    interpreter is whole (`gc.collect` first drops what still references it, such as a
    DistributedDataParallel wrapper in a reference cycle, so destroying it joins gloo's
    threads), and with ``exit_code`` (the default) the process ends with ``os._exit`` once its
    output is flushed, skipping interpreter finalisation altogether. ``exit_code=None`` returns
    instead (for a process that goes on alone). Alone (no process group) it does nothing.
    """
    import gc
    import sys

    import torch.distributed as dist
    if not (dist.is_available() and dist.is_initialized()):
        return
    dist.barrier()
    gc.collect()
    dist.destroy_process_group()
    if exit_code is None:
        return
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(exit_code)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """Return the mean of ``values`` over all processes of the run (``values`` itself when alone)."""
    world = _process_group_size()
    if world == 1:
        return values
    import torch.distributed as dist
    total = values.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)  # gloo has no AVG: sum, then divide
    return total.div_(world)


# --------------------------------------------------------------------------- optimizer and schedule
def make_optimizer(name: str, params, lr: float, weight_decay: float = 0.0, fused: bool = False):
    """Return the optimizer ``name`` ('adamw', 'adam' or 'sgd' with momentum 0.9)."""
    kinds = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam}
    if name in kinds:
        return kinds[name](params, lr=lr, weight_decay=weight_decay, **({"fused": True} if fused else {}))
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise CourseError(f"Unknown optimizer {name!r}; choose 'adamw', 'adam' or 'sgd'.")


def make_scheduler(name: str | None, optimizer, lr: float, total_steps: int):
    """Return the learning-rate schedule ``name`` ('onecycle', 'cosine' or None) over ``total_steps``."""
    if name is None or name == "none":
        return None
    if name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(total_steps, 2),
                                                   pct_start=0.15)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total_steps, 1))
    raise CourseError(f"Unknown schedule {name!r}; choose 'onecycle', 'cosine' or None.")


# --------------------------------------------------------------------------- the step
class TrainStep:
    """One optimizer step on a batch that is already on the device: ``loss = step(x)``.

    Owns the model's placement and memory format, the optimizer (fused where supported), the
    autocast dtype and gradient scaler, gradient clipping and the schedule. In a data-parallel
    run (``data_parallel="auto"``: whenever a process group of several processes is active, see
    `join_data_parallel`) the model is wrapped in `DistributedDataParallel`: each process passes
    its own slice of the global batch, and backward averages the gradients over all of them, so
    every process takes the same optimizer step. ``sync_batchnorm=True`` (CUDA only) computes
    batch-norm statistics over the global batch instead of each process's slice. ``input_transform``
    (e.g. adding noise) changes the model's inputs only; the target stays the clean batch
    (or ``target``, e.g. class labels with ``loss="cross_entropy"``). Returns the loss as a
    detached tensor on the device: reading it (``.item()``) would wait for the GPU every step.
    """

    def __init__(self, model: nn.Module, *, device: torch.device | str, lr: float = 2e-3,
                 optimizer: str = "adamw", weight_decay: float = 0.0, schedule: str | None = None,
                 total_steps: int = 1, loss: str | Callable = "mse", amp: bool | str | None = "auto",
                 channels_last: bool | str = "auto", fused: bool | str = "auto", compile: bool = False,
                 max_grad_norm: float | None = None, input_transform: Callable | None = None,
                 data_parallel: bool | str = "auto", sync_batchnorm: bool = False):
        self.device = torch.device(device)
        self.loss_fn = LOSSES.get(loss) if isinstance(loss, str) else loss
        if self.loss_fn is None:
            raise CourseError(f"Unknown loss {loss!r}; choose one of {', '.join(LOSSES)} or pass a function.")
        self.amp_dtype = resolve_amp(amp, self.device)
        self.channels_last = resolve_channels_last(channels_last, self.device)
        self.fused = (optimizer in ("adam", "adamw") and fused_optimizer_supported(self.device)
                      if fused == "auto" else bool(fused))
        world = _process_group_size()
        if data_parallel not in ("auto", True, False):
            raise CourseError(f"data_parallel must be 'auto', True or False; got {data_parallel!r}.")
        if data_parallel is True and world == 1:
            raise CourseError("data_parallel=True needs a run of several processes: launch the script with "
                              "torchrun --nproc-per-node=2 ... (or leave data_parallel='auto').")
        self.processes = world if data_parallel in ("auto", True) else 1
        if sync_batchnorm and self.processes > 1:
            if self.device.type != "cuda":
                raise CourseError("sync_batchnorm=True needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU "
                                  "kernel); on the CPU leave it off: each process normalises over its own slice "
                                  "of the batch.")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        self.model = model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = make_optimizer(optimizer, self.model.parameters(), lr, weight_decay, self.fused)
        self.scheduler = make_scheduler(schedule, self.optimizer, lr, total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        self.max_grad_norm, self.input_transform = max_grad_norm, input_transform
        if compile and not torch.cuda.is_available():
            _import_quietly("torch.utils.cpp_extension")  # else its import, during compilation, logs "No CUDA"
        wrapped = self.model
        if self.processes > 1:  # broadcasts rank 0's weights now, averages gradients in every backward
            from torch.nn.parallel import DistributedDataParallel
            wrapped = DistributedDataParallel(self.model, device_ids=[self.device.index]
                                              if self.device.type == "cuda" else None)
        self.forward = torch.compile(wrapped) if compile else wrapped
        self.settings = {"optimizer": optimizer, "lr": lr, "weight_decay": weight_decay, "schedule": schedule,
                         "amp": str(self.amp_dtype).removeprefix("torch.") if self.amp_dtype else None,
                         "channels_last": self.channels_last, "fused": self.fused, "compile": compile,
                         "max_grad_norm": max_grad_norm}
        if self.processes > 1:
            self.settings.update(processes=self.processes, sync_batchnorm=bool(sync_batchnorm))

    def __call__(self, x: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        """Train on one batch; return its loss (detached, still on the device)."""
        target = x if target is None else target
        inputs = self.input_transform(x) if self.input_transform is not None else x
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            out = self.forward(inputs)
        loss = self.loss_fn(out.float(), target)  # the loss in float32, whatever the autocast dtype
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # so clipping sees the true gradient norm
        else:
            loss.backward()
        if self.max_grad_norm is not None:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.max_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.scheduler is not None:
            self.scheduler.step()
        return loss.detach()

    @property
    def lr(self) -> float:
        """Return the current learning rate."""
        return self.optimizer.param_groups[0]["lr"]
