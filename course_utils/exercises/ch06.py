"""Chapter 06's exercises: Gaussian noise as a function, a Noise2Noise loop, the noisy input's PSNR, a filter choice."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from . import exercise


# --------------------------------------------------------------------------- 06.1 Gaussian noise as a function
def add_noise(x: torch.Tensor, sigma: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Return float images x in [0, 1] with N(0, sigma^2) noise added to every value, clipped to [0, 1]."""
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)  # one number per value
    return (x + sigma * noise).clamp(0, 1)  # a new tensor: x is left as it was


def _not_clipped(x, sigma, generator=None):  # typical wrong answer: values leave [0, 1]
    return x + sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)


def _variance_for_spread(x, sigma, generator=None):  # typical wrong answer: sigma ** 2 scales the noise
    return (x + sigma ** 2 * torch.randn(x.shape, generator=generator, dtype=x.dtype)).clamp(0, 1)


def _in_place(x, sigma, generator=None):  # typical wrong answer: changes the clean batch, the target
    return x.add_(sigma * torch.randn(x.shape, generator=generator, dtype=x.dtype)).clamp_(0, 1)


def _one_number_per_image(x, sigma, generator=None):  # typical wrong answer: shifts each image's brightness
    return (x + sigma * torch.randn(x.shape[0], 1, 1, 1, generator=generator, dtype=x.dtype)).clamp(0, 1)


@exercise("06.1", "Gaussian noise as a function", solution=add_noise,
          wrong=[_not_clipped, _variance_for_spread, _in_place, _one_number_per_image],
          hint="draw noise = torch.randn(x.shape, generator=generator) (one number per value), return "
               "(x + sigma * noise).clamp(0, 1): sigma is the standard deviation, and x + ... makes a new tensor")
def _check_add_noise(answer) -> str | None:
    grey = torch.full((64, 1, 16, 16), 0.5)  # mid-grey: at sigma 0.1 clipping (5 sigma away) practically never happens
    kept = grey.clone()
    out = answer(grey, 0.1, torch.Generator().manual_seed(0))
    if not isinstance(out, torch.Tensor) or out.shape != grey.shape or out.dtype != grey.dtype:
        return (f"it returned {type(out).__name__} {tuple(getattr(out, 'shape', ()))} "
                f"{getattr(out, 'dtype', '')}; expected a tensor of the input's shape (64, 1, 16, 16) and float32")
    if not torch.equal(grey, kept):
        return "it changed its input x in place; the clean batch is the training target and must stay as it was"
    per_image = (out - grey).flatten(1).std(1)
    if float(per_image.mean()) < 0.05:
        return (f"within each image the values hardly vary ({float(per_image.mean()):.3f}); every value needs its "
                "own noise, not one number per image")
    spread = float((out - grey).std())
    if abs(spread - 0.1) > 0.005:
        return f"at sigma 0.1 the noise's standard deviation is {spread:.4f}, not 0.1"
    again = answer(grey, 0.1, torch.Generator().manual_seed(0))
    if not torch.equal(out, again):
        return "two calls with generators seeded alike gave different noise; draw the noise from generator"
    wide = answer(torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)), 0.5)
    if float(wide.min()) < 0 or float(wide.max()) > 1:
        return f"at sigma 0.5 its values run from {float(wide.min()):.2f} to {float(wide.max()):.2f}, outside [0, 1]"
    return None


# --------------------------------------------------------------------------- 06.2 a Noise2Noise loop
def train_epoch_noise2noise(model: nn.Module, loader: DataLoader, optimizer: torch.optim.Optimizer,
                            corruption, device: torch.device | str = "cpu") -> list[float]:
    """Train model for one pass over loader to map one corrupted copy of each batch to another; return the losses."""
    model.train()
    losses = []
    for (x,) in loader:
        x = x.to(device)
        noisy_input, noisy_target = corruption(x), corruption(x)  # two independent draws of the noise
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(noisy_input), noisy_target)  # no clean image anywhere
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _clean_target(model, loader, optimizer, corruption, device="cpu"):  # typical wrong answer: chapter 06's loop
    model.train()
    losses = []
    for (x,) in loader:
        x = x.to(device)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(corruption(x)), x)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _same_copy_twice(model, loader, optimizer, corruption, device="cpu"):  # typical wrong answer: learns to copy
    model.train()
    losses = []
    for (x,) in loader:
        noisy = corruption(x.to(device))
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(noisy), noisy)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _two_copies_clean_target(model, loader, optimizer, corruption, device="cpu"):  # typical wrong answer
    model.train()
    losses = []
    for (x,) in loader:
        noisy_input, _ = corruption(x), corruption(x)
        optimizer.zero_grad()
        loss = nn.functional.mse_loss(model(noisy_input), x)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


class _Recorder(nn.Module):
    """A small model that keeps what it was given and what it returned, step by step."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x):
        out = torch.sigmoid(self.conv(x))
        self.seen.append((x.detach().clone(), out.detach().clone()))
        return out


@exercise("06.2", "a Noise2Noise loop", solution=train_epoch_noise2noise,
          wrong=[_clean_target, _same_copy_twice, _two_copies_clean_target],
          hint="call corruption(x) twice per batch: loss = mse_loss(model(first copy), second copy); the clean x "
               "is never the target, and the model's own input is not either")
def _check_noise2noise(answer) -> str | None:
    images = torch.rand(12, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    loader = DataLoader(TensorDataset(images), batch_size=4)  # 3 batches
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []  # (the clean batch it was given, the copy it returned)
    generator = torch.Generator().manual_seed(4)

    def corruption(x):
        noisy = (x + 0.2 * torch.randn(x.shape, generator=generator)).clamp(0, 1)
        calls.append((x.detach().clone(), noisy))
        return noisy

    model = _Recorder()
    start = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = answer(model, loader, optimizer, corruption)
    if not isinstance(losses, list) or len(losses) != 3:
        return f"it returned {losses!r}; expected a list of 3 losses, one per batch of the 3-batch loader"
    made = [[noisy for clean, noisy in calls if torch.equal(clean, batch)] for batch in images.split(4)]
    if len(calls) != 6 or any(len(copies) != 2 for copies in made):
        return f"it called corruption {len(calls)} times for 3 batches; a Noise2Noise step needs 2 calls per batch"
    if len(model.seen) != 3:
        return f"the model ran {len(model.seen)} times for 3 batches; run it once per batch"
    for step, ((given, out), copies, loss) in enumerate(zip(model.seen, made, losses)):
        fed = [i for i, c in enumerate(copies) if torch.equal(c, given)]
        if not fed:
            return f"in step {step + 1} the model's input is not one of the two corrupted copies"
        target = copies[1 - fed[0]]
        expected = float(nn.functional.mse_loss(out, target))
        if abs(float(loss) - expected) > 1e-5 * max(1.0, expected):
            return (f"step {step + 1} returned loss {float(loss):.5f}, but the model's output against the other "
                    f"corrupted copy gives {expected:.5f}")
    if all(torch.equal(a, p.detach()) for a, p in zip(start, model.parameters())):
        return "the weights did not change: call loss.backward() and optimizer.step() in every step"
    return None


# --------------------------------------------------------------------------- 06.3 the noisy input's PSNR
PSNR_AT_025 = 10 * math.log10(1 / 0.25 ** 2)  # MSE = sigma^2 before clipping: 12.04 dB


@exercise("06.3", "the noisy input's PSNR at sigma 0.25", solution=round(PSNR_AT_025, 2),
          wrong=[round(10 * math.log10(1 / 0.25), 2), round(-PSNR_AT_025, 2), 0.0625],
          hint="before clipping the MSE is the noise's variance, sigma^2 = 0.0625; PSNR = 10 log10(1 / MSE) in dB. "
               "Clipping only moves values towards the true ones, so it raises the PSNR")
def _check_psnr_prediction(answer) -> str | None:
    if not isinstance(answer, (int, float)) or isinstance(answer, bool):
        return f"the answer is a number of dB, got {answer!r}"
    if abs(answer - PSNR_AT_025) <= 0.01:
        return None
    if abs(answer - 10 * math.log10(1 / 0.25)) <= 0.01:
        return f"{answer} dB takes sigma as the MSE; the MSE is sigma squared"
    return f"{answer} dB is not 10 log10(1 / MSE) for this noise"


# --------------------------------------------------------------------------- 06.4 salt-and-pepper: which filter?
@exercise("06.4", "salt-and-pepper: which filter", solution="median filter", wrong=["Gaussian blur", "blur"],
          hint="a median ignores a few extreme values in its window, so isolated black and white pixels vanish; "
               "a blur averages them in and spreads each one over its neighbours (measured: several dB apart)")
def _check_better_filter(answer) -> str | None:
    if not isinstance(answer, str):
        return f"the answer is a filter's name, \"median filter\" or \"Gaussian blur\", got {answer!r}"
    if "median" in answer.lower():
        return None
    return f"{answer!r} is the filter that scored lower on salt-and-pepper noise"
