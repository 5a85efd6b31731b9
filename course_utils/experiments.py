"""Controlled comparisons: train several models on the same data and budget, score them the same way."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping

import torch
from torch import nn

from .data import ImageData
from .environment import seed_everything
from .metrics import evaluate
from .models import count_parameters
from .training import History, fit


@dataclasses.dataclass
class Comparison:
    """Results of a controlled comparison, each dict keyed by the model's name."""

    results: dict[str, dict[str, float]]
    histories: dict[str, History]
    models: dict[str, nn.Module]

    def table(self, columns=None):
        """Return the results as a DataFrame, one row per model."""
        from .plots import results_table
        return results_table(self.results, columns)


@torch.no_grad()
def code_size(model: nn.Module, images: torch.Tensor) -> int:
    """Return how many values the model's encoder keeps per image (measured on ``images[:1]``)."""
    from .data import to_float
    from .metrics import model_value_range
    encode = model.encode if hasattr(model, "encode") else model.encoder
    x = to_float(images[:1].to(next(model.parameters()).device), model_value_range(model))
    was_training = model.training
    model.eval()
    try:
        return encode(x)[0].numel()
    finally:
        model.train(was_training)


def compare_models(builders: Mapping[str, Callable[[], nn.Module]], train: ImageData, test: ImageData, *,
                   epochs: int, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                   progress: bool = True, **fit_kwargs) -> Comparison:
    """Train each model (built fresh with the same seed) on the same data and budget; score on ``test``."""
    results, histories, models = {}, {}, {}
    for name, build in builders.items():
        seed_everything(seed)  # same initial randomness for every contender
        model = build()
        t0 = time.perf_counter()
        history = fit(model, train, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                      progress=progress, desc=name, **fit_kwargs)
        train_seconds = time.perf_counter() - t0
        scores = evaluate(model, test)
        code = code_size(model, test.images[:1])
        results[name] = {**scores, "parameters": count_parameters(model),
                         "code size": code,
                         "train images/s": sum(r["images_per_second"] * r["seconds"] for r in history.records)
                         / max(sum(r["seconds"] for r in history.records), 1e-9),
                         "train seconds": train_seconds}
        histories[name], models[name] = history, model.cpu() if next(model.parameters()).is_cuda else model
    return Comparison(results, histories, models)
