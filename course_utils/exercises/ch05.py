"""Chapter 05's exercises: the training state's memory, halving the batch on out-of-memory, an atomic save."""
from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from . import exercise

OutOfMemoryError = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


# --------------------------------------------------------------------------- 05.1 what training keeps in memory
def training_state_bytes(parameters: int) -> int:
    """Return the bytes that float32 weights, their gradients and Adam's two moments take for this many parameters."""
    return 4 * 4 * parameters  # 4 bytes each, 4 copies: weights, gradients, first and second moments


@exercise("05.1", "what training keeps in memory", solution=training_state_bytes,
          wrong=[lambda p: 4 * p, lambda p: 4 * 2 * p, lambda p: 4 * 3 * p],
          hint="float32 is 4 bytes; count the copies of every parameter that live for the whole run: the weight, "
               "its gradient, and Adam's two running moments")
def _check_state(answer) -> str | None:
    for p in (1, 1_000, 3_345_603):
        got = answer(p)
        if got != training_state_bytes(p):
            return f"training_state_bytes({p:,}) returned {got!r}, expected {training_state_bytes(p):,}"
    return None


# --------------------------------------------------------------------------- 05.2 halve the batch on out-of-memory
def largest_batch_that_fits(try_batch: Callable[[int], None], batch_size: int) -> int:
    """Return the first of batch_size, batch_size // 2, ... for which try_batch(b) runs without running out of memory."""
    while batch_size >= 1:
        try:
            try_batch(batch_size)
            return batch_size
        except OutOfMemoryError:
            pass  # leave the except block first: its traceback keeps the failed step's tensors alive
        batch_size //= 2
    raise RuntimeError("not even a batch of 1 fits")


def _catches_everything(try_batch, batch_size):  # a typical wrong answer: hides a real bug as "out of memory"
    while batch_size >= 1:
        try:
            try_batch(batch_size)
            return batch_size
        except RuntimeError:
            batch_size //= 2
    raise RuntimeError("not even a batch of 1 fits")


def _halves_once(try_batch, batch_size):  # another: retries only once
    try:
        try_batch(batch_size)
        return batch_size
    except OutOfMemoryError:
        try_batch(batch_size // 2)
        return batch_size // 2


def _gpu_of(limit: int, calls: list) -> Callable[[int], None]:
    def try_batch(b: int) -> None:
        calls.append(b)
        if b > limit:
            raise OutOfMemoryError(f"CUDA out of memory (simulated: {b} > {limit})")
    return try_batch


@exercise("05.2", "halve the batch on out-of-memory", solution=largest_batch_that_fits,
          wrong=[_catches_everything, _halves_once],
          hint="loop: try the batch; on torch.OutOfMemoryError (exactly that error: any other is a bug to see) "
               "halve it and try again, until it fits or the batch would be 0")
def _check_halving(answer) -> str | None:
    calls: list = []
    got = answer(_gpu_of(100, calls), 512)
    if got != 64 or calls != [512, 256, 128, 64]:
        return f"with room for 100 images and a first batch of 512 it tried {calls} and returned {got!r}; " \
               "expected to try [512, 256, 128, 64] and return 64"

    def shape_bug(b):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (a bug, not a lack of memory)")
    try:
        answer(shape_bug, 64)
    except OutOfMemoryError:
        return "an error that is not out-of-memory came back as out-of-memory"
    except RuntimeError as e:
        if "shapes cannot be multiplied" not in str(e):
            return f"a RuntimeError that is not out-of-memory was replaced by: {e}"
        return None
    return "a RuntimeError that is not out-of-memory was swallowed instead of raised"


# --------------------------------------------------------------------------- 05.3 a save that never leaves half a file
def save_atomically(obj, path: str | Path) -> None:
    """Save obj with torch.save so that path holds either the old file or the complete new one, never a part."""
    path = Path(path)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")  # same folder, same disk
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(temporary, path)  # one step: the name points at the old file, then at the complete new one
    except BaseException:
        os.unlink(temporary)
        raise


def _straight(obj, path):  # a typical wrong answer: writes over the old file directly
    torch.save(obj, path)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("the process died in the middle of the save (simulated)")


@exercise("05.3", "a save that never leaves half a file", solution=save_atomically, wrong=[_straight],
          hint="write to a temporary file in the same folder (tempfile.mkstemp(dir=path.parent)), then os.replace "
               "it onto path; on an error delete the temporary file and raise")
def _check_atomic(answer) -> str | None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "run.pt"
        answer({"step": 1, "w": torch.ones(3)}, path)
        if torch.load(path, weights_only=True)["step"] != 1:
            return "the saved file does not load back as what was saved"
        try:
            answer({"step": 2, "broken": _Unpicklable()}, path)
        except RuntimeError:
            pass
        else:
            return "a save that failed in the middle did not raise"
        try:
            kept = torch.load(path, weights_only=True)
        except Exception as e:
            return f"after a save that failed in the middle, the old file no longer loads ({type(e).__name__})"
        if kept["step"] != 1:
            return "after a failed save the file holds something other than the old checkpoint"
        left = sorted(p.name for p in Path(folder).iterdir())
        if left != ["run.pt"]:
            return f"a failed save left files behind: {left}"
    return None
