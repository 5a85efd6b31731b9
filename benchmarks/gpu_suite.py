"""Measure the course on one GPU in one command: chapter 05's speed ladder, memory, the references' training time.

Stored runs (an H200, 2026-11-30): benchmarks/results/gpu_suite*.json; benchmarks/README.md, "GPU suite", says what they measured.

    # here, once (CIFAR-10 from $COURSE_DATA_DIR, written as git-ignored parts under carry/):
    python benchmarks/gpu_suite.py --prepare-carry carry [--with-notebook-data]
    # on the GPU machine (its own python3 with torch; the repository is the working directory):
    PYTHONPATH=. PYTHONUNBUFFERED=1 python3 benchmarks/gpu_suite.py --data carry --out "$OUT/gpu_suite.json"
    # on the CPU, in seconds, to check the suite itself (its numbers mean nothing):
    python benchmarks/gpu_suite.py --tiny --out /tmp/gpu_suite.json
    # on the CPU, the notebooks part as the GPU machine runs it (scripts, cells timed), in the smoke profile:
    python benchmarks/gpu_suite.py --device cpu --parts notebooks --part-seconds notebooks=1500 \
        --notebook-profile smoke --notebook-mode plain --out /tmp/notebooks.json

What to carry: ``carry/cifar10/test.npz`` (the 1,000 test images the references' manifest
re-scores as ``check_mse``) and the training split in parts of 12,500 images,
``carry/cifar10/train-0.npz`` .. ``train-3.npz`` (about 34 MiB each). One call carries at most
64 MiB with the working tree (about 28 MiB), so one call holds one part: carry ``train-0.npz``,
``train-1.npz`` and ``train-2.npz`` in three quick calls (command ``true``; a warm machine keeps
ignored files between calls) and run the suite in the fourth, carrying ``train-3.npz`` and
``test.npz``. With fewer parts there the suite trains on the images it has and says so (the
references then run the same number of training images as the recipe, over more epochs).
The notebooks need more (``--with-notebook-data``): CIFAR-10's whole test split
(``cifar10/test-all.npz``, 27 MiB; the references then take their 1,000 check images from it) and
Fashion-MNIST (``fashion-mnist/``, 29 MiB), one more call each, and chapter 11's range coder
``constriction``, which that machine lacks, as a wheel for its Python 3.12 (``carry/wheels``, how to
fetch it: benchmarks/README.md, "GPU suite").

Parts, each under its own time budget (``--budget-s`` shared out; a part that runs long is cut
between rows and recorded as such), the JSON rewritten atomically after every row:

* ``ladder``: the Paperspace replica on CIFAR-10: the article's own loop (``fit_tutorial_style``),
  ``cu.fit`` with its defaults, then each recommended setting (``improvement_ladder``: resident
  uint8 data, larger batches, channels_last, bf16, fp16 with a gradient scaler, fused Adam,
  ``torch.compile`` with its compile time apart); target: the best setting >= 10x the article's loop.
* ``memory``: peak GPU memory of one training step by batch size (``peak_memory_by_batch_size``)
  and the largest batch ``cu.fit_with_batch_fallback`` trains with.
* ``references``: at each CIFAR-10 code size (64/128/256/384) the candidate architectures share a
  fixed training time with the GPU recipe (``GPU_RECIPE`` of ``benchmarks/train_references.py``),
  epochs counted from a timed probe; the best on the validation split is kept in ``gpu_references.pt``
  beside ``--out`` (``train_references.py --import-gpu`` adopts it where it beats the shipped reference
  on validation). Seconds per model (target <= 80 s), images/s, validation and check-test MSE.
* ``notebooks``: the notebooks in the gpu profile (``--notebook-profile`` for another), ``--notebook-jobs``
  at a time: through ``benchmarks/run_notebooks.py`` where nbclient and ipykernel are installed, else (as on
  the GPU machine, which lacks them, or with ``--notebook-mode plain``) each notebook's code cells run as
  one Python script (``notebook_as_script``: IPython magics become ``pass``, figures go to matplotlib's Agg
  backend), every cell timed, a failure named by its cell and error line, a run past its timeout by the
  cell it was in; target in the gpu profile: each notebook passes in at most 3 minutes.

On the CPU the GPU-only rows (fp16 with a scaler, CUDA memory) are recorded as skipped with the reason.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import functools
import glob
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from unittest import mock

import numpy as np
import torch

import _common
import course_utils as cu
from course_utils.chapters._ch05_measurements import fit_tutorial_style
from course_utils import pretrained as pt
from course_utils.chapters import _ch05_measurements as ch05
from course_utils.files import atomic_write
from train_references import (CANDIDATES, CHECK_IMAGES, GPU_CANDIDATES, GPU_RECIPE, GPU_SECONDS_PER_CODE, MAX_FILE_BYTES,
                              candidate_architecture, candidate_recipe, fit_options, gpu_candidates)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_OUT = HERE / "results" / "gpu_suite.json"
PART_IMAGES = 12_500  # training images per carried part: ~34 MiB compressed, one part per device call
SEED_BATCH = 64  # the Paperspace article's batch size
SPEED_TARGET = 10.0  # the best recommended setting against the article's loop on the same GPU
SECONDS_TARGET = 80.0  # per reference model: a tenth of UvA tutorial 9's 13 minutes on an RTX 3090
CODES = (64, 128, 256, 384)
PARTS = ("references", "ladder", "memory", "notebooks")  # the references first: they are what the course ships
SHARES = {"references": 0.70, "ladder": 0.20, "memory": 0.06, "notebooks": 0.04}  # of --budget-s, left over moves on
NOTEBOOK_DIR = ROOT / "notebooks"
BUNDLE_NAME = "gpu_references.pt"  # beside --out: each code size's selected model, for train_references.py --import-gpu
MEMORY_BATCHES = (64, 256, 1024, 4096, 16384, 65536)

NOTEBOOK_DEFAULTS = dict(notebook_profile="gpu", notebook_mode="auto", notebook_jobs=1, notebooks=())

FULL = dict(ladder_images=20_000, images_per_repeat=8192, repeats=3, warmup=3, larger_batches=(256, 1024),
            compile=True, memory_batches=MEMORY_BATCHES, reference_images=None,
            reference_seconds=GPU_SECONDS_PER_CODE, reference_batch=GPU_RECIPE["batch_size"],
            reference_candidates=GPU_CANDIDATES, max_candidates=None, probe_steps=20, reference_max_epochs=2000,
            test_images=CHECK_IMAGES, notebook_timeout=300, **NOTEBOOK_DEFAULTS)
TINY = dict(ladder_images=256, images_per_repeat=64, repeats=1, warmup=1, larger_batches=(128,),
            compile="skipped in --tiny: compiling takes longer than the whole tiny run",
            memory_batches=(16, 32), reference_images=200, reference_seconds=2.0, reference_batch=64,
            reference_candidates=GPU_CANDIDATES, max_candidates=None, probe_steps=1,
            reference_max_epochs=1, test_images=100, notebook_timeout=60, **NOTEBOOK_DEFAULTS)


# --------------------------------------------------------------------------- carried data
def _write_npz(path: Path, **arrays) -> None:
    """Write a compressed .npz atomically."""
    with atomic_write(path) as f:
        np.savez_compressed(f, **arrays)


def prepare_carry(source: Path, dest: Path, part_images: int = PART_IMAGES,
                  check_images: int = CHECK_IMAGES, notebooks: bool = False) -> list[Path]:
    """Write CIFAR-10's training split in parts and the references' check subset of the test split; return the files.

    With ``notebooks`` also the data the chapters read in the gpu profile: CIFAR-10's whole test split
    (``cifar10/test-all.npz``) and Fashion-MNIST's two splits (``fashion-mnist/{train,test}.npz``), compressed.
    """
    train = cu.read_pack(cu.data.pack_path("cifar10", "train", source))
    test = cu.read_pack(cu.data.pack_path("cifar10", "test", source))
    images = train.images.permute(0, 2, 3, 1).numpy()  # (N, C, H, W) => the packs' (N, H, W, C)
    labels, total = train.labels.numpy(), len(train)
    starts = list(range(0, total, part_images))
    written = []
    for k, start in enumerate(starts):
        part = images[start:start + part_images]
        meta = {"part": k, "parts": len(starts), "start": start, "count": int(part.shape[0]), "total": total,
                "crc32": cu.data._checksum(part), "crc32_total": cu.data._checksum(images)}
        path = dest / "cifar10" / f"train-{k}.npz"
        _write_npz(path, images=part, labels=labels[start:start + part_images],
                   classes=np.asarray(train.classes, dtype=str), meta=np.asarray(json.dumps(meta)))
        written.append(path)
    check = test.subset(check_images)
    written.append(cu.write_pack(dest / "cifar10" / "test.npz", check.images.permute(0, 2, 3, 1).numpy(),
                                 check.labels.numpy(), check.classes,
                                 info={"subset": f"test.subset({check_images}), seed 0: the manifest's check_mse"}))
    if notebooks:
        written.append(_write_carried_pack(dest / "cifar10" / "test-all.npz", test))
        with mock.patch.dict(os.environ, COURSE_DATA_DIR=str(source)):  # read as the course reads it: pack, Debian's
            fashion = {name: cu.load_dataset("fashion-mnist", name, download=False) for name in ("train", "test")}
        for name, data in fashion.items():
            written.append(_write_carried_pack(dest / "fashion-mnist" / f"{name}.npz", data))
    return written


def _write_carried_pack(path: Path, data: cu.ImageData) -> Path:
    """Write a whole split compressed (carried once, read by join_carry); return the path."""
    array = data.images.permute(0, 2, 3, 1).numpy()
    meta = {"count": len(data), "crc32": cu.data._checksum(array)}
    _write_npz(path, images=array, labels=data.labels.numpy(), classes=np.asarray(data.classes, dtype=str),
               meta=np.asarray(json.dumps(meta)))
    return path


def _read_carried_pack(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return (images, labels, classes) of a pack written by _write_carried_pack, its checksum checked."""
    with np.load(path, allow_pickle=False) as z:
        if cu.data._checksum(z["images"]) != json.loads(str(z["meta"]))["crc32"]:
            raise cu.CorruptPackError(f"Carried pack {path} fails its checksum: prepare and carry it again.")
        return z["images"], z["labels"], [str(c) for c in z["classes"]]


def join_carry(carry: Path, work: Path) -> dict:
    """Join the carried training parts present into a pack under ``work``, copy the test pack; return what was there."""
    parts = sorted((carry / "cifar10").glob("train-*.npz"), key=lambda p: int(p.stem.split("-")[1]))
    if not parts:
        raise cu.DataNotFoundError(f"No training parts under {carry}/cifar10: prepare them with "
                                   f"python benchmarks/gpu_suite.py --prepare-carry {carry} and carry them.")
    images, labels, metas, classes = [], [], [], None
    for path in parts:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            if cu.data._checksum(z["images"]) != meta["crc32"]:
                raise cu.CorruptPackError(f"Carried part {path} fails its checksum: prepare and carry it again.")
            images.append(z["images"])
            labels.append(z["labels"])
            classes = [str(c) for c in z["classes"]]
            metas.append(meta)
    joined = np.concatenate(images)
    expected = metas[0]["parts"]
    present = [m["part"] for m in metas]
    complete = present == list(range(expected))
    if complete and cu.data._checksum(joined) != metas[0]["crc32_total"]:
        raise cu.CorruptPackError(f"The joined parts under {carry} differ from the split they were cut from.")
    info = {"parts_present": present, "parts_expected": expected, "complete": complete}
    cu.write_pack(work / "cifar10" / "train.npz", joined, np.concatenate(labels), classes, info=info)
    whole = carry / "cifar10" / "test-all.npz"
    if whole.is_file():  # the whole split, for the notebooks; the references take the check subset of it
        test_images, test_labels, test_classes = _read_carried_pack(whole)
    else:
        test = cu.read_pack(carry / "cifar10" / "test.npz")
        test_images, test_labels, test_classes = (test.images.permute(0, 2, 3, 1).numpy(), test.labels.numpy(),
                                                  test.classes)
    cu.write_pack(work / "cifar10" / "test.npz", test_images, test_labels, test_classes)
    fashion = []
    for name in ("train", "test"):
        path = carry / "fashion-mnist" / f"{name}.npz"
        if path.is_file():
            cu.write_pack(work / "fashion-mnist" / f"{name}.npz", *_read_carried_pack(path))
            fashion.append(name)
    return {**info, "train_images": int(joined.shape[0]),
            "test_images": len(test_labels),
            "total_train_images": metas[0]["total"], "fashion_mnist_splits": fashion, "carry": str(carry)}


# --------------------------------------------------------------------------- time guard and results
class PartCut(Exception):
    """Raised between rows when a part has used up its time budget."""


class Budget:
    """A part's time budget: ``check`` between rows raises PartCut once it is spent."""

    def __init__(self, seconds: float):
        self.seconds, self.t0 = seconds, time.perf_counter()

    @property
    def used(self) -> float:
        """Return the seconds spent so far."""
        return time.perf_counter() - self.t0

    @property
    def left(self) -> float:
        """Return the seconds left (negative once overspent)."""
        return self.seconds - self.used

    def check(self, next_row: str, estimate: float = 0.0) -> None:
        """Raise PartCut if the budget is spent, or if ``estimate`` seconds more would overspend it."""
        if self.left <= 0 or estimate > self.left:
            why = f"an estimated {estimate:.0f} s more" if estimate > 0 and self.left > 0 else "none left"
            raise PartCut(f"cut before '{next_row}': {self.used:.0f} s used of its {self.seconds:.0f} s budget "
                          f"({why})")


class Results:
    """The suite's JSON document, rewritten atomically after every row."""

    def __init__(self, path: Path, doc: dict):
        self.path, self.doc = path, doc

    def part(self, name: str) -> dict:
        """Return the record of part ``name``."""
        return self.doc["parts"][name]

    def add_row(self, part: str, row: dict) -> dict:
        """Append a row to a part and save; return the row."""
        self.part(part)["rows"].append(row)
        self.save()
        return row

    def save(self) -> None:
        """Write the document atomically."""
        with atomic_write(self.path) as f:
            f.write((json.dumps(self.doc, indent=1, default=str) + "\n").encode())


def throughput_row(setup: str, r: cu.Throughput | str, **extra) -> dict:
    """Return one ladder row: a measurement, or a string saying why the setup was not measured."""
    if isinstance(r, str):
        status = "failed" if r.startswith("failed") else "skipped"
        return {"setup": setup, "status": status, "reason": r, **extra}
    return {"setup": setup, "status": "measured", "images_per_second": r.images_per_second, "rates": r.rates,
            "batch_size": r.batch_size, "images": r.images, "seconds": r.seconds,
            "warmup_seconds": r.warmup_seconds, "data_fraction": r.data_fraction, "settings": r.settings,
            "note": r.note, **extra}


# --------------------------------------------------------------------------- the parts
@functools.lru_cache(maxsize=None)
def split(name: str) -> cu.ImageData:
    """Return CIFAR-10's ``name`` split from the data root, read once."""
    return cu.load_dataset("cifar10", name)


def ladder_part(res: Results, budget: Budget, cfg: dict, device: torch.device) -> None:
    """Chapter 05's ladder: the article's loop, fit's defaults, then each recommended setting."""
    train = split("train").subset(cfg["ladder_images"])
    per = cfg["images_per_repeat"]
    budget.check("the article's loop")
    torch.manual_seed(0)
    article = fit_tutorial_style(cu.PaperspaceAutoencoder(), train, SEED_BATCH, epochs=cfg["repeats"],
                                    max_batches=per // SEED_BATCH + 2, warmup=2, device=device)
    res.add_row("ladder", throughput_row(f"article's loop (PIL + DataLoader, batch {SEED_BATCH})", article,
                                         role="baseline"))
    print(f"article's loop: {article}", flush=True)
    budget.check("cu.fit with its defaults")
    torch.manual_seed(0)
    fit_defaults = _common.fit_throughput(cu.PaperspaceAutoencoder(), train.subset(per), SEED_BATCH,
                                          cfg["repeats"], device=device)
    fit_defaults.note = "cu.fit's own epoch timer, " + _common.describe_settings(
        _common.fit_auto_settings(device))
    res.add_row("ladder", throughput_row(f"cu.fit, its defaults, batch {SEED_BATCH}", fit_defaults, role="fit"))
    res.part("ladder")["target"] = ladder_target(res.part("ladder"))
    print(f"cu.fit, its defaults: {fit_defaults}", flush=True)
    budget.check("the ladder's rungs")
    def on_row(name: str, r: cu.Throughput | str) -> None:
        row = throughput_row(name, r, role="rung")
        if name == "+ torch.compile" and row["status"] == "measured":
            row["compile_seconds"] = row["warmup_seconds"]  # the untimed warm-up steps, compilation included
            res.part("ladder")["compile_seconds"] = row["compile_seconds"]
        res.add_row("ladder", row)
        res.part("ladder")["target"] = ladder_target(res.part("ladder"))
        if name != changes[-1][0]:
            budget.check("the next rung")  # between rungs: a part over its budget stops here, its rows kept

    changes = ch05.ladder_changes(device.type == "cuda", SEED_BATCH, cfg["larger_batches"], cfg["compile"])
    _, kept = ch05.improvement_ladder(cu.PaperspaceAutoencoder, train, changes, images_per_repeat=per,
                                      warmup=cfg["warmup"], repeats=cfg["repeats"], device=device, on_row=on_row)
    res.part("ladder")["kept_settings"] = kept


def ladder_target(part: dict) -> dict | None:
    """Return the best measured setting against the article's loop, and the verdict on the 10x target."""
    rows = [r for r in part["rows"] if r["status"] == "measured"]
    base = next((r for r in rows if r.get("role") == "baseline"), None)
    others = [r for r in rows if r.get("role") != "baseline"]
    if base is None or not others:
        return None
    best = max(others, key=lambda r: r["images_per_second"])
    ratio = best["images_per_second"] / base["images_per_second"]
    return {"baseline": base["setup"], "baseline_images_per_second": base["images_per_second"],
            "best": best["setup"], "best_images_per_second": best["images_per_second"], "ratio": ratio,
            "target": SPEED_TARGET, "verdict": _common.verdict(ratio, SPEED_TARGET)}


def memory_part(res: Results, budget: Budget, cfg: dict, device: torch.device) -> None:
    """Peak GPU memory of one training step by batch size, and the largest batch fit trains with."""
    part = res.part("memory")
    models = {"Paperspace replica": cu.PaperspaceAutoencoder,
              "recommended autoencoder (code 256)": lambda: cu.recommended_autoencoder((3, 32, 32), 256)}
    first_oom = None
    for name, build in models.items():
        budget.check(f"peak memory of the {name}")
        memory = ch05.peak_memory_by_batch_size(build(), (3, 32, 32), cfg["memory_batches"], device=device)
        if memory is None:
            for bs in cfg["memory_batches"]:
                res.add_row("memory", {"model": name, "batch_size": bs, "status": "skipped",
                                       "reason": f"no CUDA here (device {device.type}): peak GPU memory not measured"})
            continue
        for bs in cfg["memory_batches"]:
            if bs in memory:
                row = ({"status": "measured", "peak_mib": memory[bs]} if memory[bs] is not None else
                       {"status": "out of memory", "peak_mib": None})
            else:
                row = {"status": "skipped", "reason": "a smaller batch already ran out of memory"}
            res.add_row("memory", {"model": name, "batch_size": bs, **row})
        fits = [bs for bs, m in memory.items() if m is not None]
        part.setdefault("largest_measured_batch", {})[name] = max(fits) if fits else None
        if name.startswith("Paperspace"):
            first_oom = next((bs for bs, m in memory.items() if m is None), None)
    budget.check("the largest batch fit trains with")
    train = split("train")
    start = min(first_oom or max(cfg["memory_batches"]), len(train))
    torch.manual_seed(0)
    history, used = cu.fit_with_batch_fallback(cu.PaperspaceAutoencoder(), train.subset(start), batch_size=start,
                                               epochs=1, lr=1e-3, optimizer="adam", schedule=None, device=device,
                                               progress=False, stop_after_steps=2)
    part["fallback"] = {"asked_batch": start, "used_batch": used, "fell_back": used != start,
                        "train_loss": history.last["train_loss"],
                        "why_this_batch": ("the first batch that ran out of memory above" if first_oom else
                                           "no batch tried ran out of memory: the largest tried (or all the "
                                           "images there are, if fewer)")}
    res.save()


def probe_step_seconds(arch: dict, train: cu.ImageData, device: torch.device, steps: int, recipe: dict) -> float:
    """Return the seconds one training step of this architecture takes with ``recipe`` (a throwaway model)."""
    probe = cu.ConvAutoencoder(**arch)
    images = train.subset(steps * recipe["batch_size"])
    history = cu.fit(probe, images, epochs=2, device=device, progress=False, **fit_options(recipe))  # 1 warms up
    return history.records[-1]["seconds"] / max(1, len(images) // recipe["batch_size"])


def references_part(res: Results, budget: Budget, cfg: dict, device: torch.device, data: dict,
                    bundle_path: Path) -> None:
    """Train each code size's candidates with the GPU recipe in a fixed time; keep the best on the validation split.

    Each code size gets ``reference_seconds`` of training shared by its candidates (those whose float16
    file fits the 5 MB limit); each candidate trains as many epochs as a timed probe says fit in its share.
    The candidate with the lowest validation MSE is kept in ``bundle_path`` (float16, rewritten after every
    code size) for ``train_references.py --import-gpu``; every candidate is timed and scored on the
    references' 1,000 check images of the test split.
    """
    part = res.part("references")
    full, test = split("train"), split("test").subset(cfg["test_images"])  # None: all (1,000 carried)
    train, val = cu.validation_split(full)  # exactly the references' training and validation images
    complete = data.get("complete", True) and cfg["reference_images"] is None
    if not complete:
        train = train.subset(cfg["reference_images"])
    recipe = dict(GPU_RECIPE, batch_size=cfg["reference_batch"])
    plain = lambda obj: json.loads(json.dumps(obj, default=str))  # what weights_only=True can load back
    bundle = {"complete": complete, "recipe": recipe, "header": plain(res.doc["header"]), "models": {}}
    part.update(recipe=recipe, seconds_per_code=cfg["reference_seconds"], train_images=len(train),
                validation_images=len(val))
    last_seconds = 0.0
    for code in CODES:
        name = f"cifar10-{code}"
        labels = gpu_candidates(train.image_shape, code, cfg["reference_candidates"])[:cfg["max_candidates"]]
        if not labels:  # every candidate's float16 file is over the limit at this size: say so, go on
            res.add_row("references", {"name": name, "code_size": code, "status": "skipped",
                                       "reason": f"no candidate of {list(cfg['reference_candidates'])} fits "
                                                 f"the {MAX_FILE_BYTES / 1e6:g} MB file limit at {code} values"})
            continue
        share = cfg["reference_seconds"] / len(labels)
        budget.check(name, estimate=last_seconds)
        t_code = time.perf_counter()
        scored = []
        for label in labels:
            arch, trained_with = candidate_architecture(train.image_shape, code, label), candidate_recipe(label, recipe)
            t0 = time.perf_counter()
            step_s = probe_step_seconds(arch, train, device, cfg["probe_steps"], trained_with)
            batch = recipe["batch_size"]
            steps_per_epoch = len(train) // batch if len(train) >= 2 * batch else -(-len(train) // batch)
            # the probe and setting up count against the share; 90% of what is left goes to training, since
            # steps run a little slower over a whole run than in the probe (seen on the H200)
            epochs = max(1, int(0.9 * (share - (time.perf_counter() - t0)) / (step_s * steps_per_epoch)))
            epochs = min(epochs, cfg["reference_max_epochs"])
            cu.seed_everything(0)
            model = cu.ConvAutoencoder(**arch)
            t1 = time.perf_counter()
            history = cu.fit(model, train, epochs=epochs, device=device, progress=False, desc=f"{name} {label}",
                             **fit_options(trained_with))
            fit_seconds = time.perf_counter() - t1
            seconds = time.perf_counter() - t0  # probe included: what making this model cost
            val_mse = cu.evaluate(model, val, ssim=False, device=device)["mse"]
            check = cu.evaluate(model, test, ssim=False, device=device)
            row = {"name": name, "code_size": code, "candidate": label, "candidates": labels, "status": "measured",
                   "recipe": trained_with, "epochs": epochs, "probe_step_seconds": step_s,
                   "train_images": len(train), "images_seen": len(train) * epochs, "seconds": seconds,
                   "fit_seconds": fit_seconds, "images_per_second": len(train) * epochs / fit_seconds,
                   "val_mse": val_mse, "test_mse": check["mse"], "test_psnr": check["psnr"],
                   "test_images": len(test), "final_train_loss": history.last["train_loss"],
                   "target_seconds": SECONDS_TARGET, "verdict": _common.verdict(SECONDS_TARGET, seconds)}
            scored.append((row, model, arch))
            res.add_row("references", row)
            print(f"{name} {label}: {epochs} epochs in {seconds:.1f} s ({row['images_per_second']:,.0f} images/s), "
                  f"validation MSE {val_mse:.5f}", flush=True)
        best, model, arch = min(scored, key=lambda s: s[0]["val_mse"])
        for row, _, _ in scored:
            row["selected"] = row is best
        bundle["models"][name] = {"architecture": arch, "state_dict": pt.half_precision_state(model),
                                 "row": plain(best)}
        with atomic_write(bundle_path) as f:
            torch.save(bundle, f)
        part["target"] = references_target(part)
        res.save()
        last_seconds = time.perf_counter() - t_code
    part["note"] = ("the references' exact training and validation images" if complete
                    else f"{len(train):,} training images here instead of the references' 45,000: timings only, "
                    "the models are not comparable with the references' (nor adopted)")


def references_target(part: dict) -> dict | None:
    """Return the slowest measured model against the 80 s target (met only if every code size ran and met it)."""
    rows = [r for r in part["rows"] if r["status"] == "measured"]
    if not rows:
        return None
    slowest = max(rows, key=lambda r: r["seconds"])
    all_ran = {r["code_size"] for r in rows} == set(CODES)
    met = all_ran and _common.verdict(SECONDS_TARGET, slowest["seconds"]) == "met"
    return {"target_seconds": SECONDS_TARGET, "slowest": slowest["name"], "slowest_seconds": slowest["seconds"],
            "models_measured": len(rows), "verdict": "met" if met else "missed"}


PLAIN_PRELUDE = """import matplotlib
matplotlib.use("Agg")  # no screen: figures are drawn and discarded
try:
    from IPython.display import display
except ImportError:  # no IPython on this machine: show what a notebook would, as text
    def display(*objects, **kwargs):
        for obj in objects:
            print(obj)

import os as _os, time as _time
_CELL_LOG = _os.environ.get("NOTEBOOK_CELL_LOG")  # one line per cell as it starts: kept when the run is killed


def _cell(index, first_line):
    if _CELL_LOG:
        with open(_CELL_LOG, "a") as log:
            log.write(f"{_time.time():.3f}\\t{index}\\t{first_line}\\n")
"""
NOTEBOOK_TARGET_SECONDS = 180.0  # per chapter in the gpu profile on the lent GPU (issue: at most 3 minutes)


def notebook_as_script(path: str | Path) -> str:
    """Return a notebook's code cells as one Python script: IPython magics become `pass`, figures go to Agg.

    Each cell starts with ``_cell(index, first line)``, which appends when it started to $NOTEBOOK_CELL_LOG
    (read by ``cell_seconds``): every cell's time, and which one failed or was running when the run was cut.
    """
    nb = json.loads(Path(path).read_text())
    chunks = [PLAIN_PRELUDE]
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        lines = []
        source = "".join(cell["source"])
        for line in source.splitlines():
            code = line.lstrip()
            if code.startswith(("%", "!")):  # %pip (the Colab cell) and shell lines: not Python
                line = line[: len(line) - len(code)] + "pass  # IPython only: " + code
            lines.append(line)
        first = next((ln.strip() for ln in source.splitlines() if ln.strip()), "")[:60]
        chunks.append(f"# ---- cell {index}\n_cell({index}, {first!r})\n" + "\n".join(lines))
    return "\n\n".join(chunks) + "\n"


def _run_notebook_jupyter(path: str, limit: int, profile: str, env: dict) -> dict:
    """Run one notebook headless through run_notebooks.py (nbclient and a Jupyter kernel)."""
    with tempfile.TemporaryDirectory() as tmp:
        record = Path(tmp) / "record.json"
        command = [sys.executable, str(HERE / "run_notebooks.py"), "--profile", profile, "--timeout", str(limit),
                   "--json", str(record), path]
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit + 30, cwd=ROOT, env=env)
        rec = json.loads(record.read_text())[0] if record.is_file() else {}
        return {"status": "passed" if done.returncode == 0 else "failed", "mode": "jupyter",
                "error": rec.get("error") or (None if done.returncode == 0 else done.stderr[-300:]),
                "slowest_cell": rec.get("slowest_cell"), "slowest_cell_seconds": rec.get("slowest_cell_seconds")}


def _last_line(text: str) -> str | None:
    """Return the last non-empty line of a traceback (the exception and its message), or None."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1][:300] if lines else None


# The script runs in the namespace of a `python -c` program, as a notebook's cells run in a kernel's: its
# __main__ has no file, so processes that torch.multiprocessing spawns (chapter 10) do not re-run the script.
RUN_AS_NOTEBOOK = "import sys; path = sys.argv[1]; exec(compile(open(path).read(), path, 'exec'))"


def cell_seconds(log: str, end: float) -> list[dict]:
    """Return each started cell's wall time from a $NOTEBOOK_CELL_LOG; the last one ran until ``end`` (time.time())."""
    starts = []
    for line in log.splitlines():
        at, index, first = line.split("\t", 2)
        starts.append((float(at), int(index), first))
    ends = [at for at, _, _ in starts[1:]] + [end]
    return [{"cell": index, "first_line": first, "seconds": round(stop - at, 3)}
            for (at, index, first), stop in zip(starts, ends)]


def _run_notebook_plain(path: str, limit: int, profile: str, env: dict) -> dict:
    """Run one notebook's code cells as a Python script (no Jupyter on this machine); time every cell."""
    with tempfile.TemporaryDirectory() as tmp:
        script, log = Path(tmp) / (Path(path).stem + ".py"), Path(tmp) / "cells.tsv"
        script.write_text(notebook_as_script(path))
        env = dict(env, NOTEBOOK_CELL_LOG=str(log))
        try:
            done = subprocess.run([sys.executable, "-c", RUN_AS_NOTEBOOK, str(script)], capture_output=True,
                                  text=True, timeout=limit, cwd=Path(path).parent, env=env)
            status, stderr = ("passed" if done.returncode == 0 else "failed"), done.stderr
        except subprocess.TimeoutExpired as e:
            status = "cut"
            stderr = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
        cells = cell_seconds(log.read_text() if log.is_file() else "", time.time())  # the clock the script logs by
    row = {"status": status, "mode": "plain python (no Jupyter here)", "cells": cells}
    if cells:
        slowest = max(cells, key=lambda c: c["seconds"])
        row.update(slowest_cell=f"cell {slowest['cell']}: {slowest['first_line']}",
                   slowest_cell_seconds=slowest["seconds"])
    if status == "failed":
        row["error"] = {"cell": cells[-1]["cell"] if cells else None, "line": _last_line(stderr),
                        "stderr_tail": stderr[-600:]}
    elif status == "cut":
        row["reason"] = (f"ran past its {limit} s timeout"
                         + (f", in cell {cells[-1]['cell']} ({cells[-1]['first_line']})" if cells else ""))
    return row


def notebooks_part(res: Results, budget: Budget, cfg: dict, device: torch.device, tiny: bool) -> None:
    """Execute the notebooks in a profile (the gpu one by default), ``jobs`` at a time, one timeout each.

    Headless Jupyter where nbclient and ipykernel are installed (unless ``mode`` is "plain"), else each
    notebook's code as a script with every cell timed. With ``jobs`` > 1 the notebooks share the GPU and
    the CPU cores (split between them), so each time is an upper bound on what it takes alone.
    """
    part = res.part("notebooks")
    profile = cfg["notebook_profile"]
    if tiny or (device.type != "cuda" and profile == "gpu"):
        part["status"] = "skipped"
        part["reason"] = "--tiny does not execute notebooks" if tiny else "the gpu profile needs a CUDA GPU"
        res.save()
        return
    jupyter = all(importlib.util.find_spec(m) is not None for m in ("nbformat", "nbclient", "ipykernel"))
    run = _run_notebook_jupyter if jupyter and cfg["notebook_mode"] != "plain" else _run_notebook_plain
    jobs = max(1, cfg["notebook_jobs"])
    threads = max(1, (os.cpu_count() or 1) // jobs)
    env = dict(os.environ, COURSE_PROFILE=profile, MPLBACKEND="Agg", OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    paths = sorted(glob.glob(str(NOTEBOOK_DIR / "*.ipynb")))
    if cfg["notebooks"]:
        paths = [p for p in paths if any(Path(p).name.startswith(prefix) for prefix in cfg["notebooks"])]
    part.update(profile=profile, jobs=jobs, threads_per_notebook=threads, mode=run.__name__.split("_")[-1],
                target_seconds=NOTEBOOK_TARGET_SECONDS if profile == "gpu" else None)

    def one(path: str) -> dict:
        name = Path(path).name
        if budget.left <= 10:
            return {"notebook": name, "status": "not run", "reason": "the part's time budget was spent"}
        limit = max(10, min(cfg["notebook_timeout"], int(budget.left)))
        t0 = time.perf_counter()
        row = {"notebook": name, **run(path, limit, profile, env)}
        row["seconds"] = time.perf_counter() - t0
        if profile == "gpu":
            row["verdict"] = "met" if row["status"] == "passed" and row["seconds"] <= NOTEBOOK_TARGET_SECONDS \
                else "missed"
        print(f"{name}: {row['status']} in {row['seconds']:.0f} s"
              + (f" (slowest {row['slowest_cell']}, {row['slowest_cell_seconds']:.0f} s)"
                 if row.get("slowest_cell") else "")
              + (f" -- error in cell {row['error']['cell']}: {row['error']['line']}"
                 if isinstance(row.get("error"), dict) else ""), flush=True)
        return row

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for row in pool.map(one, paths):  # in the notebooks' order, each saved as it comes
            res.add_row("notebooks", row)
    rows = part["rows"]
    part["target"] = {"target_seconds": NOTEBOOK_TARGET_SECONDS, "notebooks": len(rows),
                      "passed": sum(r["status"] == "passed" for r in rows),
                      "slowest": max((r for r in rows if "seconds" in r), key=lambda r: r["seconds"],
                                     default={}).get("notebook"),
                      "verdict": "met" if rows and all(r.get("verdict") == "met" for r in rows) else "missed"} \
        if profile == "gpu" else None
    res.save()


# --------------------------------------------------------------------------- the run
def driver_version() -> str | None:
    """Return the NVIDIA driver's version (nvidia-smi), or None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None


def header(device: torch.device) -> dict:
    """Return where and when the suite ran: card, driver, CUDA, torch, date and the machine line."""
    cuda = device.type == "cuda"
    return {"device": device.type, "card": torch.cuda.get_device_name(device) if cuda else None,
            "driver": driver_version() if cuda else None, "cuda": torch.version.cuda if cuda else None,
            "torch": torch.__version__, "date": dt.datetime.now().isoformat(timespec="minutes"),
            "machine": _common.machine_line(stamp=True)}


def run_suite(args: argparse.Namespace) -> Results:
    """Run every part in its time budget, saving the JSON after each row; return the results."""
    cfg = dict(TINY if args.tiny else FULL)
    if args.candidates:
        cfg["reference_candidates"] = tuple(args.candidates)
    if args.reference_batch:
        cfg["reference_batch"] = args.reference_batch
    if args.max_candidates:
        cfg["max_candidates"] = args.max_candidates
    if args.seconds_per_code:
        cfg["reference_seconds"] = args.seconds_per_code
    for key in ("notebook_profile", "notebook_mode", "notebook_jobs", "notebook_timeout", "notebooks"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    device = torch.device(args.device) if args.device else cu.get_device()
    data = {"source": os.environ.get("COURSE_DATA_DIR", str(cu.data.data_root()))}
    if args.data is not None:
        work = Path(args.work or tempfile.mkdtemp(prefix="gpu_suite_data_"))
        data.update(join_carry(args.data, work), source=str(work))
        os.environ["COURSE_DATA_DIR"] = str(work)
    cu.seed_everything(0)
    doc = {"suite": "benchmarks/gpu_suite.py", "tiny": args.tiny,
           "command": _common.command_line("gpu_suite.py", args.argv),
           "header": header(device), "data": data, "budget_s": args.budget_s, "settings": cfg,
           "targets": {"speed_ratio": SPEED_TARGET, "seconds_per_model": SECONDS_TARGET},
           "parts": {p: {"status": "pending", "rows": []} for p in PARTS}}
    res = Results(args.out, doc)
    res.save()
    t0 = time.perf_counter()
    steps: dict[str, Callable[[Budget], None]] = {
        "ladder": lambda b: ladder_part(res, b, cfg, device),
        "memory": lambda b: memory_part(res, b, cfg, device),
        "references": lambda b: references_part(res, b, cfg, device, data, args.out.with_name(BUNDLE_NAME)),
        "notebooks": lambda b: notebooks_part(res, b, cfg, device, args.tiny)}
    carried = 0.0  # seconds a part left unused move on to the next ones
    for name in [p for p in PARTS if p not in args.parts]:
        res.part(name).update(status="skipped", reason="not asked for (--parts)")
    res.save()
    for name in args.parts:  # in the order asked for
        part = res.part(name)
        if name in args.part_seconds:
            own = args.part_seconds[name] + carried
        elif args.part_budget_s is not None:
            own = args.part_budget_s
        else:
            own = args.budget_s * SHARES[name] + carried
        seconds = min(own, args.budget_s - (time.perf_counter() - t0))
        budget = Budget(seconds)
        part.update(status="running", budget_s=round(seconds, 1))
        try:
            steps[name](budget)
            if part["status"] == "running":
                part["status"] = "done"
        except PartCut as e:
            part.update(status="cut", reason=str(e))
        except Exception as e:  # a part that breaks is recorded; the others still run
            part.update(status="failed", reason=f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        part["seconds"] = round(budget.used, 1)
        carried = max(0.0, budget.left) if args.part_budget_s is None else 0.0
        res.save()
        print(f"== {name}: {part['status']} in {budget.used:.0f} s" + (f" ({part['reason']})"
                                                                        if part.get("reason") else ""), flush=True)
    doc["elapsed_s"] = round(time.perf_counter() - t0, 1)
    res.save()
    return res


def fmt(value, spec: str = ",.0f") -> str:
    """Return a number formatted, or '–' for None."""
    return "–" if value is None else format(value, spec)


def summary(doc: dict) -> str:
    """Return the short tables printed last: the ladder, the targets, memory, references, notebooks."""
    h = doc["header"]
    out = [f"GPU suite on {h['card'] or h['device']} (driver {h['driver'] or '–'}, torch {h['torch']}, {h['date']})"]
    ladder = doc["parts"]["ladder"]
    target = ladder.get("target")
    base = target["baseline_images_per_second"] if target else None
    rows = [{"setup": r["setup"], "batch": fmt(r.get("batch_size"), "d"), "images/s": fmt(r.get("images_per_second")),
             "x article": fmt(r["images_per_second"] / base if base and r.get("images_per_second") else None, ".2f"),
             "note": r.get("note") or r.get("reason") or ""} for r in ladder["rows"]]
    if rows:
        out += ["", _common.md_table(rows)]
    if ladder.get("compile_seconds") is not None:
        out.append(f"torch.compile's warm-up (compilation included): {ladder['compile_seconds']:.1f} s")
    if target:
        out.append(f"Best setting vs the article's loop: {target['ratio']:.2f}x ({target['best']}); target "
                   f">= {SPEED_TARGET:g}x: {target['verdict']}")
    mem = [r for r in doc["parts"]["memory"]["rows"] if r["status"] != "skipped"]
    if mem:
        out += ["", _common.md_table([{"model": r["model"], "batch": r["batch_size"],
                                       "peak MiB": fmt(r.get("peak_mib")), "status": r["status"]} for r in mem])]
    fallback = doc["parts"]["memory"].get("fallback")
    if fallback:
        out.append(f"fit_with_batch_fallback: asked {fallback['asked_batch']}, trained with {fallback['used_batch']}")
    refs = doc["parts"]["references"]
    measured = [r for r in refs["rows"] if r["status"] == "measured"]
    if measured:
        out += ["", _common.md_table([{"model": r["name"], "candidate": r["candidate"], "epochs": r["epochs"],
                                       "seconds": fmt(r["seconds"], ".1f"), "images/s": fmt(r["images_per_second"]),
                                       "val MSE": fmt(r["val_mse"], ".5f"), "test MSE (check)": fmt(r["test_mse"], ".5f"),
                                       "kept": "yes" if r.get("selected") else "", "<= 80 s": r["verdict"]}
                                      for r in measured])]
    out += [f"{r['name']}: {r['status']} ({r['reason']})" for r in refs["rows"] if r["status"] != "measured"]
    if refs.get("target"):
        t = refs["target"]
        out.append(f"Every model in <= {SECONDS_TARGET:g} s: {t['verdict']} (slowest {t['slowest']}, "
                   f"{t['slowest_seconds']:.1f} s; {t['models_measured']} models, all {len(CODES)} code sizes: "
                   f"{'yes' if t['verdict'] == 'met' else 'see rows'})")
    nbs = doc["parts"]["notebooks"]
    if nbs["rows"]:
        out += ["", f"Notebooks, {nbs.get('profile')} profile, {nbs.get('jobs')} at a time:",
                _common.md_table([{"notebook": r["notebook"], "status": r["status"],
                                   "seconds": fmt(r.get("seconds"), ".0f"),
                                   "slowest cell": r.get("slowest_cell") or "",
                                   "its seconds": fmt(r.get("slowest_cell_seconds"), ".0f"),
                                   "first error": (f"cell {r['error']['cell']}: {r['error']['line']}"
                                                   if isinstance(r.get("error"), dict) else r.get("error") or
                                                   r.get("reason") or "")}
                                  for r in nbs["rows"]])]
        if nbs.get("target"):
            t = nbs["target"]
            out.append(f"Every notebook passed in <= {t['target_seconds']:g} s: {t['verdict']} "
                       f"({t['passed']} of {t['notebooks']} passed; slowest {t['slowest']})")
    out.append("")
    out += [f"{p}: {doc['parts'][p]['status']}" + (f" ({doc['parts'][p]['reason']})" if doc["parts"][p].get("reason")
                                                   else "") for p in PARTS]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="the results file (JSON)")
    parser.add_argument("--data", type=Path, help="a folder of carried parts (--prepare-carry): join them and use them")
    parser.add_argument("--work", type=Path, help="where joined packs go (default: a temporary folder)")
    parser.add_argument("--prepare-carry", type=Path, metavar="DIR",
                        help="write the CIFAR-10 parts to carry into DIR (from $COURSE_DATA_DIR) and stop")
    parser.add_argument("--source", type=Path,
                        help="with --prepare-carry: the data root to read (default: the course's)")
    parser.add_argument("--part-images", type=int, default=PART_IMAGES, help="training images per carried part")
    parser.add_argument("--tiny", action="store_true", help="the whole suite on a few images in seconds (CPU check)")
    parser.add_argument("--budget-s", type=float, default=480.0,
                        help="seconds for the whole suite, shared by the parts")
    parser.add_argument("--part-budget-s", type=float, help="the same budget for every part instead (for tests)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS,
                        help="the parts to run, in this order (default: %(default)s)")
    parser.add_argument("--part-seconds", nargs="+", default=[], metavar="PART=SECONDS",
                        help="a part's own budget instead of its share of --budget-s (unused seconds move on)")
    parser.add_argument("--device", help="cuda, cpu, ... (default: the best here)")
    parser.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES),
                        help=f"references: the architectures to try at each code size (default: {', '.join(GPU_CANDIDATES)})")
    parser.add_argument("--max-candidates", type=int,
                        help="references: try only the first N of --candidates that fit the file limit at each size")
    parser.add_argument("--seconds-per-code", type=float,
                        help=f"references: training seconds per code size, shared by its candidates "
                             f"(default {GPU_SECONDS_PER_CODE:g})")
    parser.add_argument("--reference-batch", type=int, help=f"references: the batch size (default {GPU_RECIPE['batch_size']})")
    parser.add_argument("--notebook-profile", choices=("smoke", "laptop", "gpu"),
                        help="notebooks: the course profile they run in (default gpu; others to check the part on a CPU)")
    parser.add_argument("--notebook-mode", choices=("auto", "plain"),
                        help="notebooks: plain runs each as a Python script with its cells timed even where Jupyter "
                             "is installed (auto: Jupyter if there)")
    parser.add_argument("--notebook-jobs", type=int, help="notebooks: how many run at once (default 1)")
    parser.add_argument("--notebook-timeout", type=int, help="notebooks: seconds each may run (default 300)")
    parser.add_argument("--notebooks", nargs="+", metavar="PREFIX", help="notebooks: only those named so (e.g. 01 11)")
    parser.add_argument("--with-notebook-data", action="store_true",
                        help="with --prepare-carry: also the whole CIFAR-10 test split and Fashion-MNIST")
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        args.part_seconds = {k: float(v) for k, v in (item.split("=", 1) for item in args.part_seconds)}
    except ValueError:
        parser.error("--part-seconds takes PART=SECONDS, e.g. notebooks=330")
    if set(args.part_seconds) - set(PARTS):
        parser.error(f"--part-seconds: unknown part(s) {sorted(set(args.part_seconds) - set(PARTS))}")
    if args.prepare_carry is not None:
        files = prepare_carry(args.source or cu.data.data_root(), args.prepare_carry, args.part_images,
                              notebooks=args.with_notebook_data)
        for path in files:
            print(f"{path}  {path.stat().st_size / 2**20:.1f} MiB")
        return 0
    res = run_suite(args)
    print("\n" + summary(res.doc))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
