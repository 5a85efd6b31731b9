"""Reference models trained to convergence once, shipped with the package, loaded after a hash check.

Like UvA's deep learning tutorial 9, a chapter loads the reference if it is present and otherwise
trains in the profile's budget (`load_or_train`), and says which happened. The files live in
``course_utils/pretrained/``: one half-precision ``<name>.pt`` state dict per model and
``manifest.json``, one row per model recording how it was made (architecture, recipe, epochs, wall
time, machine, torch version, the exact command) and what it scores on the test split, with the
file's SHA-256. ``benchmarks/train_references.py`` writes both.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, CourseError
from .models import ConvAutoencoder

PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"
MANIFEST = PRETRAINED_DIR / "manifest.json"
RETRAIN = "python benchmarks/train_references.py --only {name}"  # run from a clone of the course repository


class PretrainedError(CheckpointError):
    """A reference model is missing, altered, or no longer fits its recorded architecture."""


def _manifest() -> dict[str, dict]:
    if not MANIFEST.is_file():
        return {}
    return {row["name"]: row for row in json.loads(MANIFEST.read_text())["models"]}


AUTOENCODER = "ConvAutoencoder"  # a row without a "model" field is one of these


def pretrained_names(model: str | None = None) -> list[str]:
    """Return the names of the reference models the manifest lists (only those of class ``model`` if given)."""
    return sorted(name for name, row in _manifest().items() if model in (None, row.get("model", AUTOENCODER)))


def pretrained_info(name: str) -> dict:
    """Return the manifest row of reference ``name``: how it was trained and what it scores."""
    rows = _manifest()
    if name not in rows:
        known = ", ".join(sorted(rows)) or "none (the manifest is missing)"
        raise PretrainedError(f"No reference model called {name!r}. Known references: {known}.")
    return dict(rows[name])


def has_pretrained(name: str) -> bool:
    """Return whether reference ``name`` is listed and its file is present (its hash is checked on loading)."""
    row = _manifest().get(name)
    return row is not None and (PRETRAINED_DIR / row["file"]).is_file()


def file_sha256(path: str | Path) -> str:
    """Return the SHA-256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_reference(row: dict, build: Callable[..., nn.Module] | None = None) -> nn.Module:
    """Return an untrained model with the architecture a manifest row records.

    A `ConvAutoencoder` is built here. A model whose class a chapter writes (chapter 12's `VAE`) is built
    by ``build``, called with the row's architecture: the core never imports a chapter.
    """
    model = row.get("model", AUTOENCODER)
    if model == AUTOENCODER:
        return ConvAutoencoder(**row["architecture"])
    if build is None:
        where = row.get("module", "its chapter's module")
        raise PretrainedError(f"The reference {row.get('name', '')!r} is a {model}, a class a chapter writes: pass it "
                              f"as build=, e.g. `from {where} import {model}` then "
                              f"`cu.load_pretrained({row.get('name', '')!r}, build={model})`.")
    return build(**row["architecture"])


def load_pretrained(name: str, device: torch.device | str | None = None,
                    build: Callable[..., nn.Module] | None = None) -> nn.Module:
    """Return reference model ``name`` in float32 and eval mode, after checking its file's SHA-256.

    ``build``: the class (or function) that makes the model from the row's architecture, for a model a
    chapter writes, such as chapter 12's `VAE`; autoencoders need none.
    """
    row = pretrained_info(name)
    path = PRETRAINED_DIR / row["file"]
    retrain = row.get("retrain", RETRAIN).format(name=name)  # a chapter's model names its own training script
    how = (f"Retrain it with `{retrain}` from a clone of the course repository, "
           "or reinstall the course package.")
    if not path.is_file():
        raise PretrainedError(f"The reference model file {path} is missing. {how}")
    digest = file_sha256(path)
    if digest != row["sha256"]:
        raise PretrainedError(f"The reference model file {path} does not match the manifest (SHA-256 "
                              f"{digest[:12]}..., expected {row['sha256'][:12]}...): it was changed or damaged. {how}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        model = build_reference(row, build)
        model.load_state_dict(state)
    except PretrainedError:
        raise
    except (RuntimeError, TypeError, CourseError) as e:
        raise PretrainedError(f"The reference model {name!r} no longer fits its recorded architecture "
                              f"({str(e).splitlines()[0][:200]}): the model code changed since it was trained. "
                              f"{how}") from e
    model = model.float().eval()
    return model.to(device) if device is not None else model


def load_or_train(name: str, train: Callable[[], nn.Module], device: torch.device | str | None = None,
                  build: Callable[..., nn.Module] | None = None) -> tuple[nn.Module, str]:
    """Return (model, what happened): reference ``name`` if present, else the model ``train()`` returns.

    Prints one line saying which: the reference with its recorded test score, or training in the
    profile's budget because the reference is absent.
    """
    if has_pretrained(name):
        model = load_pretrained(name, device, build)
        row = pretrained_info(name)
        score = (f"test negative ELBO {row['test_bits_per_dim']:.2f} bits/dim" if "test_bits_per_dim" in row
                 else f"test MSE {row['test_mse']:.5f} ({row['test_psnr']:.2f} dB)")
        what = f"loaded reference {name!r}: trained {row['epochs']} epochs, {score}"
    else:
        model = train()
        what = f"reference {name!r} not present: trained in this profile's budget instead"
    print(what[0].upper() + what[1:])  # capitalize() would lower-case "MSE" and "dB"
    return model, what


def save_reference(model: nn.Module, path: str | Path) -> str:
    """Write ``model``'s parameters in half precision and its buffers as they are (atomically); return the SHA-256.

    Buffers such as batch norm's running variance stay float32: they are few, and can exceed
    float16's largest value (65,504), which would store infinity and ruin every output.
    """
    from .files import atomic_write

    with atomic_write(path) as f:
        torch.save(half_precision_state(model), f)
    return file_sha256(path)


def half_precision_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the state dict as a reference stores it: parameters in float16, buffers as they are, on the CPU."""
    parameters = {name for name, _ in model.named_parameters()}
    return {k: (v.half() if k in parameters and v.is_floating_point() else v).cpu()
            for k, v in model.state_dict().items()}

