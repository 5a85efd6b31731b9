"""Controlled comparisons: train several models on the same data and budget, score them the same way."""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from .data import ImageData, to_float
from .engine import eval_mode
from .environment import seed_everything
from .errors import CourseError
from .metrics import evaluate, model_value_range, reconstruct
from .models import count_parameters
from .training import History, fit


@dataclasses.dataclass
class Comparison:
    """Results of a controlled comparison, each dict keyed by the model's name."""

    results: dict[str, dict[str, float]]
    histories: dict[str, History]
    models: dict[str, nn.Module]

    def table(self, columns: Sequence[str] | None = None):
        """Return the results as a DataFrame, one row per model."""
        from .plots import results_table
        return results_table(self.results, columns)

    def merge(self, other: Comparison) -> Comparison:
        """Return one Comparison holding this one's models, then ``other``'s (their names must differ)."""
        shared = sorted(set(self.results) & set(other.results))
        if shared:
            raise CourseError(f"Both comparisons hold a model named {', '.join(map(repr, shared))}; "
                              "rename one (the keys of the builders dict) before merging.")
        return Comparison({**self.results, **other.results}, {**self.histories, **other.histories},
                          {**self.models, **other.models})

    def show_reconstructions(self, images: torch.Tensor | ImageData, n: int = 8, title: str | None = None,
                             extra: Mapping[str, torch.Tensor] | None = None):
        """Show ``n`` images on the top row and each model's reconstructions below; return the Figure.

        ``extra`` adds rows of reconstructions made elsewhere (e.g. PCA's), by name, after the models'.
        """
        from .plots import show_reconstructions
        shown = (images.images if isinstance(images, ImageData) else images)[:n]
        rows = {name: reconstruct(model, shown) for name, model in self.models.items()}
        rows.update({name: r[:n] for name, r in (extra or {}).items()})
        return show_reconstructions(shown, rows, n=n, title=title)


@torch.no_grad()
def code_size(model: nn.Module, images: torch.Tensor) -> int:
    """Return how many values ``model.encode`` keeps per image (measured on ``images[:1]``)."""
    if not callable(getattr(model, "encode", None)):
        raise CourseError(f"{type(model).__name__} has no encode(x) method, so its code cannot be measured. "
                          "Give it one that returns the code, e.g. def encode(self, x): return self.encoder(x).")
    x = to_float(images[:1].to(next(model.parameters()).device), model_value_range(model))
    with eval_mode(model):
        return model.encode(x)[0].numel()


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


def sweep_code_sizes(build: Callable[[int], nn.Module], sizes: Sequence[int], train: ImageData, test: ImageData,
                     *, epochs: int, label: str = "code", **compare_kwargs) -> tuple[dict[int, dict], Comparison]:
    """Train one model per code size with ``compare_models``; return (results keyed by code size, Comparison)."""
    builders = {f"{label} {k}": (lambda k=k: build(k)) for k in sizes}
    comparison = compare_models(builders, train, test, epochs=epochs, **compare_kwargs)
    by_size = {}
    for (name, scores), k in zip(comparison.results.items(), sizes):
        size = int(scores["code size"])
        if size != k:
            raise CourseError(f"The model built for code size {k} ({name}) keeps {size} values per image.")
        by_size[size] = scores
    return by_size, comparison
