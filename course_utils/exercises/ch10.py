"""Chapter 10's exercises: one gradient from W slices, each rank's slice of a global batch, a learning rate."""
from __future__ import annotations

import math

import torch

from . import exercise


# --------------------------------------------------------------------------- 10.1 what all-reduce computes
def combine_slice_gradients(slice_gradients: list[torch.Tensor]) -> torch.Tensor:
    """Return the gradient of the whole batch's mean loss from the gradients of W equal slices."""
    total = torch.stack(slice_gradients).sum(0)  # what all-reduce (SUM) gives every process
    return total / len(slice_gradients)  # the mean: each slice's loss was a mean over fewer images


@exercise("10.1", "one gradient from W slices", solution=combine_slice_gradients,
          wrong=[lambda grads: torch.stack(grads).sum(0), lambda grads: grads[0]],
          hint="the batch's loss is the mean of the slices' mean losses (equal slices), so its gradient is the "
               "mean of their gradients: sum them (what all-reduce does), then divide by W")
def _check_combine(answer) -> str | None:
    torch.manual_seed(0)
    w, x = torch.randn(5), torch.randn(12, 5)
    batch = torch.autograd.grad(((x @ w.requires_grad_()) ** 2).mean(), w)[0]
    slices = [torch.autograd.grad(((part @ w) ** 2).mean(), w)[0] for part in x.chunk(3)]
    got = answer(slices)
    if not isinstance(got, torch.Tensor) or got.shape != batch.shape:
        return f"it returned {type(got).__name__} {getattr(got, 'shape', '')}; expected a tensor of shape (5,)"
    if not torch.allclose(got, batch, rtol=1.3e-6, atol=1e-5):
        return (f"from 3 slices of 4 images it gave {[round(v, 4) for v in got.tolist()]}, but the gradient of "
                f"all 12 images is {[round(v, 4) for v in batch.tolist()]}")
    return None


# --------------------------------------------------------------------------- 10.2 each rank's slice
def rank_slice(order: torch.Tensor, batch: int, global_batch: int, rank: int, world: int) -> torch.Tensor:
    """Return the image indices process rank of world trains on in global batch number batch of an epoch's order."""
    per_rank = global_batch // world
    start = batch * global_batch + rank * per_rank
    return order[start:start + per_rank]


def _strided(order, batch, global_batch, rank, world):  # a typical wrong answer: every world-th image of the epoch
    return order[rank::world][batch * (global_batch // world):(batch + 1) * (global_batch // world)]


@exercise("10.2", "each rank's slice of a global batch", solution=rank_slice, wrong=[_strided],
          hint="global batch b holds order[b * B:(b + 1) * B]; of it, rank r takes the r-th of W equal parts, "
               "B // W images starting at b * B + r * (B // W)")
def _check_rank_slice(answer) -> str | None:
    order = torch.randperm(96, generator=torch.Generator().manual_seed(0))
    for batch, global_batch, world in [(0, 32, 2), (1, 32, 2), (2, 24, 4)]:
        parts = [answer(order, batch, global_batch, r, world) for r in range(world)]
        truth = [rank_slice(order, batch, global_batch, r, world) for r in range(world)]
        for r, (got, want) in enumerate(zip(parts, truth)):
            if not torch.equal(torch.as_tensor(got), want):
                return (f"for global batch {batch} of {global_batch} images on {world} processes, rank {r} got "
                        f"indices {torch.as_tensor(got)[:4].tolist()}..., expected {want[:4].tolist()}...")
    return None


# --------------------------------------------------------------------------- 10.3 the learning rate
LR_AT_256 = 5e-3 * math.sqrt(256 / 32)  # the square-root rule from lr=5e-3 at batch 32: about 0.01414


@exercise("10.3", "the learning rate of a larger batch", solution=LR_AT_256,
          wrong=[5e-3 * 256 / 32, 5e-3 * math.sqrt(32 / 256), 5e-3],
          hint="the effective batch grew 256 / 32 = 8 times; Adam's square-root rule multiplies the learning rate "
               "by the square root of that, sqrt(8) = 2.83 (the linear rule, for SGD, would multiply by 8)")
def _check_lr_at_256(answer) -> str | None:
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        return f"the answer is {answer!r}; write the learning rate as a number, e.g. 0.001"
    if abs(answer - LR_AT_256) > 1e-3 * LR_AT_256:
        return f"{answer:g} is not the square-root rule's learning rate for an effective batch of 256 (within 0.1%)"
    return None
