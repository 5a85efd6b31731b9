"""Train the course's reference autoencoders to convergence, once, and ship them small.

    python benchmarks/train_references.py                        # every reference not yet in the manifest
    python benchmarks/train_references.py --only cifar10-256     # one (retrains it)
    python benchmarks/train_references.py --select cifar10-384   # flat vs spatial on the validation split
    python benchmarks/train_references.py --report               # the README table from the manifest

Each reference trains on the training split less the course's validation split
(`cu.validation_split`: 5,000 images held out), is selected on that validation split only, and is
scored once on the whole test split. The weights are stored in half precision in
``course_utils/pretrained/<name>.pt`` (what `cu.load_pretrained` reads, after checking the SHA-256
recorded here) and the manifest row says how the model was made: architecture, recipe, epochs,
wall time, images/s, machine, torch version, the exact command, and the test scores *of the stored
half-precision weights* (what a learner loads). Training resumes from ``--work`` after an
interruption, so a long run can be done in pieces.
"""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

import _common
import course_utils as cu
from course_utils import pretrained as pt
from course_utils.chapters import _ch04_analysis as ch04
from course_utils.files import atomic_write

HERE = Path(__file__).resolve().parent
SELECTION = HERE / "results" / "reference_selection.jsonl"

# What each reference is: the dataset, the code size and the architecture (ConvAutoencoder's arguments),
# chosen on the validation split (rows in results/reference_selection.jsonl, and for CIFAR-10 the candidates of
# the GPU runs in results/gpu_suite*.json). The shipped CIFAR-10 files were trained on a GPU (gpu_suite.py, then
# --import-gpu; each manifest row has both commands); `--only NAME` retrains one here on the CPU with RECIPE for
# `epochs` epochs instead, which gives a somewhat higher error than the GPU's 90-306 epochs.
REFERENCES: dict[str, dict] = {
    "fashion-mnist-196": {"dataset": "fashion-mnist", "code_size": 196, "bottleneck": "spatial", "base_width": 64,
                          "epochs": 8},
    "cifar10-256": {"dataset": "cifar10", "code_size": 256, "bottleneck": "flat", "base_width": 32, "epochs": 16},
    "cifar10-384": {"dataset": "cifar10", "code_size": 384, "bottleneck": "flat", "base_width": 24, "epochs": 16},
    "cifar10-128": {"dataset": "cifar10", "code_size": 128, "bottleneck": "flat", "base_width": 48, "epochs": 26,
                    "recipe": {"batch_size": 256, "augment": "flip_half"}},
    "cifar10-64": {"dataset": "cifar10", "code_size": 64, "bottleneck": "flat", "base_width": 48, "epochs": 26,
                   "recipe": {"batch_size": 256, "augment": "flip_half"}},
}
RECIPE = dict(cu.RECOMMENDED_TRAINING)
CHECK_IMAGES = 1_000  # test images a quick check re-scores (test.subset(CHECK_IMAGES)): the tests redo it


def architecture(image_shape, code_size: int, bottleneck: str, base_width: int = 32, **variant) -> dict:
    """Return the ConvAutoencoder arguments of the recommended autoencoder for this shape, code and width.

    ``variant`` overrides some of them (e.g. ``convs_per_stage=2, activation="gelu"``) for a candidate
    that departs from the recommended model.
    """
    model = cu.recommended_autoencoder(image_shape, code_size, bottleneck, base_width)
    stages = len([m for m in model.encoder if isinstance(m, torch.nn.Conv2d)])
    widths = tuple(min(base_width * 2 ** i, 256) for i in range(stages))
    side = image_shape[-1] // 2 ** stages
    latent = code_size if bottleneck == "flat" else code_size // (side * side)
    arch = dict(image_size=image_shape[-1], in_channels=image_shape[0], widths=list(widths), latent=latent,
                bottleneck=bottleneck, downsample="stride", upsample="transposed", kernel_size=4,
                activation="relu", convs_per_stage=1, batch_norm=True, output_activation="sigmoid")
    rebuilt = cu.ConvAutoencoder(**arch)
    assert [p.shape for p in rebuilt.parameters()] == [p.shape for p in model.parameters()], "arguments drifted"
    if variant:
        arch.update(variant)
        cu.ConvAutoencoder(**arch)  # raises a clear error for arguments the model does not take
    return arch


@functools.lru_cache(maxsize=None)
def splits(dataset: str):
    """Return (train less validation, validation, test) of a dataset, whole (read once per run)."""
    train, val = cu.validation_split(cu.load_dataset(dataset, "train"))
    return train, val, cu.load_dataset(dataset, "test")


def stored_model(arch: dict, state: dict) -> cu.ConvAutoencoder:
    """Return the float32 model a reference's state dict (half-precision parameters) describes."""
    model = cu.ConvAutoencoder(**arch)
    model.load_state_dict(state)
    return model.float().eval()


def may_replace(name: str, val_mse: float) -> bool:
    """Return whether a model with this validation MSE may replace reference ``name``: not higher than the shipped one's."""
    shipped = pt.pretrained_info(name)["val_mse"] if name in pt.pretrained_names() else None
    return shipped is None or round(val_mse, 6) <= shipped


def train_reference(name: str, spec: dict, work: Path, command: str, train_images: int | None = None,
                    replace: bool = False) -> dict | None:
    """Train one reference (resuming from ``work``), store its half-precision weights, return its manifest row.

    The new model replaces the shipped one only if its validation MSE is not higher (or ``replace``);
    otherwise nothing is written and None is returned.
    """
    train, val, test = splits(spec["dataset"])
    train = train.subset(train_images)  # all of them unless trying the script out
    arch = architecture(train.image_shape, spec["code_size"], spec["bottleneck"], spec["base_width"])
    recipe = {**RECIPE, **spec.get("recipe", {})}  # e.g. {"batch_size": 256, "augment": "flip_half"}
    cu.seed_everything(0)
    model = cu.ConvAutoencoder(**arch)
    checkpoint = work / f"{name}.ckpt"
    history = cu.fit(model, train, val, epochs=spec["epochs"], checkpoint=checkpoint, resume=checkpoint.exists(),
                     desc=name, **fit_options(recipe))
    seconds = sum(r["seconds"] for r in history.records)
    val_mse = cu.evaluate(stored_model(arch, pt.half_precision_state(model)), val, ssim=False)["mse"]
    if not (replace or may_replace(name, val_mse)):
        print(f"{name}: validation MSE {val_mse:.6f} is higher than the shipped reference's "
              f"{pt.pretrained_info(name)['val_mse']:.6f}; kept the shipped one (--replace to overwrite it)", flush=True)
        return None
    how = {"recipe": recipe, "epochs": len(history), "wall_seconds": round(seconds, 1), "device": "cpu",
           "images_per_second": round(len(train) * len(history) / seconds, 1), "machine": _common.machine_line(),
           "torch": torch.__version__, "date": f"{dt.date.today()}", "command": command}
    return store_reference(name, spec["dataset"], spec["code_size"], arch, model, (train, val, test), how)


def store_reference(name: str, dataset: str, code_size: int, arch: dict, model: torch.nn.Module, data: tuple,
                    how: dict) -> dict:
    """Write ``model``'s half-precision weights as reference ``name``, score them; return the manifest row.

    ``data`` is (train, validation, test) as `splits` returns them; ``how`` says how the model was trained
    (recipe, epochs, wall time, images/s, machine, torch, date, command) and goes into the row as it is.
    """
    train, val, test = data
    path = pt.PRETRAINED_DIR / f"{name}.pt"
    digest = pt.save_reference(model, path)
    shipped = pt.build_reference({"architecture": arch})
    shipped.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    scores = cu.evaluate(shipped.float(), test)
    val_scores = cu.evaluate(shipped.float(), val, ssim=False)
    check = cu.evaluate(shipped.float(), test.subset(CHECK_IMAGES), ssim=False)  # what tests/test_pretrained.py redoes
    # PCA with as many components as the code has values, fit on the same training images: the linear baseline
    pca = ch04.pca_curve(train, test, [code_size])[code_size]
    return {
        "name": name, "file": path.name, "sha256": digest, "bytes": path.stat().st_size,
        "dataset": dataset, "code_size": code_size, "architecture": arch,
        "parameters": cu.count_parameters(shipped), **{k: how[k] for k in ("recipe", "epochs")},
        "train_images": len(train), "validation_images": len(val), "test_images": len(test),
        **{k: how[k] for k in ("wall_seconds", "images_per_second")},
        "val_mse": round(val_scores["mse"], 6), "test_mse": round(scores["mse"], 6),
        "test_psnr": round(scores["psnr"], 3), "test_ssim": round(scores["ssim"], 4),
        "check_images": CHECK_IMAGES, "check_mse": check["mse"],
        "pca_test_mse": round(pca["mse"], 6), "pca_test_psnr": round(pca["psnr"], 3),
        "weights": "float16 (scores are of these stored weights)",
        **{k: v for k, v in how.items() if k not in ("recipe", "epochs", "wall_seconds", "images_per_second")},
    }


def write_manifest(rows: dict[str, dict]) -> None:
    """Write the manifest atomically, rows sorted by name."""
    text = json.dumps({"models": [rows[k] for k in sorted(rows)]}, indent=1) + "\n"
    with atomic_write(pt.MANIFEST) as f:
        f.write(text.encode())


def add_to_manifest(row: dict) -> None:
    """Add or replace one row, re-reading the manifest under a lock: several runs may train references at once."""
    import fcntl

    with open(pt.PRETRAINED_DIR / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = {n: pt.pretrained_info(n) for n in pt.pretrained_names()}
        rows[row["name"]] = row
        write_manifest(rows)


CANDIDATES = {"flat, width 24": ("flat", 24), "flat, width 32": ("flat", 32), "flat, width 48": ("flat", 48),
              "flat, width 64": ("flat", 64), "spatial, width 32": ("spatial", 32), "spatial, width 64": ("spatial", 64),
              # closer to UvA tutorial 9's design (two convolutions per stage, GELU): not yet trained on a GPU
              "flat, width 32, 2 convs, GELU": ("flat", 32, {"convs_per_stage": 2, "activation": "gelu"})}
# "<candidate> + flips" trains the same model on batches whose random half is mirrored (fit's augment=cu.flip_half):
# twice the distinct pictures, against the overfitting seen at 64 and 128 values (benchmarks/README.md)
FLIPS = " + flips"
CANDIDATES.update({label + FLIPS: CANDIDATES[label] for label in
                   ("flat, width 32", "flat, width 48", "flat, width 64", "flat, width 32, 2 convs, GELU")})
AUGMENTS = {"flip_half": cu.flip_half}  # a recipe's "augment" names one of these


def candidate_architecture(image_shape, code_size: int, label: str) -> dict:
    """Return the ConvAutoencoder arguments of candidate ``label`` at this code size."""
    bottleneck, width, *variant = CANDIDATES[label]
    return architecture(image_shape, code_size, bottleneck, width, **(variant[0] if variant else {}))


def candidate_recipe(label: str, recipe: dict) -> dict:
    """Return ``recipe`` as candidate ``label`` trains with it (``augment`` named for its " + flips" variant)."""
    return {**recipe, "augment": "flip_half"} if label.endswith(FLIPS) else dict(recipe)


def fit_options(recipe: dict) -> dict:
    """Return fit's keyword arguments for a recipe (whose ``augment``, if any, is a name in AUGMENTS)."""
    options = dict(recipe)
    if options.get("augment") is not None:
        options["augment"] = AUGMENTS[options["augment"]]
    return options


# The GPU recipe (benchmarks/gpu_suite.py's references part): the CPU recipe with a batch of 512, which keeps a
# GPU busy (at 32 it waits on Python between steps), and as many epochs as fit in GPU_SECONDS_PER_CODE seconds
# of training per code size, shared by that size's candidates and counted from a timed probe before training.
GPU_RECIPE = {**RECIPE, "batch_size": 512}
GPU_CANDIDATES = ("flat, width 32", "spatial, width 64")
GPU_SECONDS_PER_CODE = 72.0  # so that no model trains longer than the 80 s target, probe and set-up included
MAX_FILE_BYTES = 5_000_000  # a shipped reference's float16 file may not exceed this


def file_bytes(arch: dict) -> int:
    """Return about how large the float16 file of a model with this architecture would be."""
    return 2 * cu.count_parameters(cu.ConvAutoencoder(**arch))


def gpu_candidates(image_shape, code_size: int, labels=GPU_CANDIDATES) -> list[str]:
    """Return the candidates at this code size whose float16 file stays within MAX_FILE_BYTES."""
    return [label for label in labels
            if file_bytes(candidate_architecture(image_shape, code_size, label)) <= MAX_FILE_BYTES]


def import_gpu(bundle_path: Path, suite_path: Path, command: str) -> list[dict]:
    """Adopt the GPU suite's selected models where they beat the shipped reference on the validation split.

    The bundle (``gpu_references.pt``, written by gpu_suite.py) holds each code size's candidate that scored
    best on the validation split there; here it is re-scored on this machine, on the same validation split,
    against the reference in the manifest, and replaces it only if its validation MSE is not higher. Returns one
    comparison row per model (what was adopted and why); the test split is scored only for the adopted ones.
    """
    bundle = torch.load(bundle_path, map_location="cpu", weights_only=True)
    suite = json.loads(suite_path.read_text())
    if not bundle.get("complete"):
        raise cu.CourseError(f"{bundle_path} was trained on part of the training split: it cannot replace a "
                             "reference. Carry every part (benchmarks/README.md, GPU suite) and run the suite again.")
    header = suite["header"]
    rows = []
    for name, entry in sorted(bundle["models"].items()):
        spec = REFERENCES[name]
        data = splits(spec["dataset"])
        model = stored_model(entry["architecture"], entry["state_dict"])
        val_mse = cu.evaluate(model, data[1], ssim=False)["mse"]
        shipped = pt.pretrained_info(name) if name in pt.pretrained_names() else None
        adopt = may_replace(name, val_mse)
        row = {"name": name, "candidate": entry["row"]["candidate"], "gpu_val_mse": round(val_mse, 6),
               "shipped_val_mse": shipped and shipped["val_mse"], "adopted": adopt}
        if adopt:
            r = entry["row"]
            how = {"recipe": r["recipe"], "epochs": r["epochs"], "wall_seconds": round(r["seconds"], 1), "device": "cuda",
                   "images_per_second": round(r["images_per_second"], 1),
                   "machine": f"{header['card']} (driver {header['driver']}, CUDA {header['cuda']}), {header['machine']}",
                   "torch": header["torch"], "date": header["date"][:10],
                   "command": f"{suite['command']} (on the GPU); then {command} (here: scores and files)",
                   "selection": f"best validation MSE of {', '.join(r['candidates'])} trained the same way there"}
            add_to_manifest(store_reference(name, spec["dataset"], spec["code_size"], entry["architecture"], model,
                                            data, how))
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def select(name: str, epochs: int, train_images: int | None, candidates=tuple(CANDIDATES),
           batch_size: int = RECIPE["batch_size"]) -> list[dict]:
    """Train each candidate architecture briefly on the same images; return their validation scores."""
    spec = REFERENCES[name]
    train, val, _ = splits(spec["dataset"])
    train = train.subset(train_images or None)  # 0: all of them
    rows = []
    for label in candidates:
        arch = candidate_architecture(train.image_shape, spec["code_size"], label)
        bottleneck, base_width = arch["bottleneck"], arch["widths"][0]
        cu.seed_everything(0)
        model = cu.ConvAutoencoder(**arch)
        t0 = time.perf_counter()
        recipe = candidate_recipe(label, {**RECIPE, "batch_size": batch_size})
        history = cu.fit(model, train, val, epochs=epochs, desc=f"{name} {label}", **fit_options(recipe))
        seconds = time.perf_counter() - t0
        rows.append({"name": name, "candidate": label, "bottleneck": bottleneck, "base_width": base_width,
                     "code_size": spec["code_size"], "epochs": epochs, "train_images": len(train),
                     "recipe": recipe, "split": "validation", "val_mse": round(history.last["val_mse"], 6),
                     "val_mse_by_epoch": [round(r["val_mse"], 6) for r in history.records],
                     "parameters": cu.count_parameters(model), "seconds": round(seconds, 1),
                     "torch_threads": torch.get_num_threads(), "machine": _common.machine_line(stamp=True)})
        print(json.dumps({k: rows[-1][k] for k in ("name", "candidate", "val_mse", "parameters", "seconds")}))
    return rows


def wall_time(row: dict) -> str:
    """Return a manifest row's training time in words: seconds on a GPU, minutes on a CPU."""
    if row.get("device") == "cuda":
        return f"{row['wall_seconds']:.0f} s (GPU)"
    return f"{row['wall_seconds'] / 60:.1f} min (CPU)"


def report() -> str:
    """Return the README's table of the references and the targets met or missed, from the manifest."""
    uva = ch04.UVA_TUTORIAL9_TEST_MSE
    versus_uva = ch04.versus_uva
    rows = [pt.pretrained_info(n) for n in pt.pretrained_names(pt.AUTOENCODER)]  # VAEs: train_vae_references.py
    lines = ["| reference | code | bottleneck, width | parameters | batch | augment | epochs | wall time | images/s | "
             "test MSE | PSNR (dB) | SSIM | PCA, same images | UvA (literature) | file |",
             "|---|---:|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    verdicts = []
    for r in rows:
        arch = r["architecture"]
        u = uva.get(r["code_size"]) if r["dataset"] == "cifar10" else None
        lines.append(f"| `{r['name']}` | {r['code_size']} | {arch['bottleneck']}, {arch['widths'][0]} | "
                     f"{r['parameters']:,} | {r['recipe']['batch_size']} | {r['recipe'].get('augment') or '–'} | "
                     f"{r['epochs']} | {wall_time(r)} | "
                     f"{r['images_per_second']:,.0f} | {r['test_mse']:.5f} | {r['test_psnr']:.2f} | {r['test_ssim']:.3f} | "
                     f"{r['pca_test_mse']:.5f} | {f'{u:.5f}' if u else '–'} | {r['bytes'] / 1e6:.2f} MB |")
        ratio = r["test_mse"] / r["pca_test_mse"]
        if r["dataset"] == "fashion-mnist":
            verdicts.append(f"`{r['name']}` beats PCA by at least 25%: **{'met' if ratio <= 0.75 else 'missed'}** "
                            f"({100 * (1 - ratio):.0f}% lower MSE).")
        else:
            ok = r["test_mse"] < r["pca_test_mse"]
            uva_words = f"; against UvA's literature number it {versus_uva(r['test_mse'], u)}" if u else ""
            verdicts.append(f"`{r['name']}` beats PCA: **{'met' if ok else 'missed'}** "
                            f"({ratio:.2f}x PCA's MSE{uva_words}).")
        if r.get("device") == "cuda":
            verdicts.append(f"`{r['name']}` trained in at most 80 s on the GPU: "
                            f"**{'met' if r['wall_seconds'] <= 80 else 'missed'}** ({r['wall_seconds']:.1f} s).")
        else:
            verdicts.append(f"`{r['name']}` trained in at most 15 minutes on this CPU: "
                            f"**{'met' if r['wall_seconds'] <= 900 else 'missed'}** ({r['wall_seconds'] / 60:.1f} min).")
    return "\n".join(lines + [""] + [f"* {v}" for v in verdicts])


def add_training_options(parser: argparse.ArgumentParser) -> None:
    """Add the options both reference scripts take: threads, the resumable work folder, report, try-out sizes."""
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--work", type=Path, default=cu.data.user_cache_dir() / "references",
                        help="folder for resumable training checkpoints")
    parser.add_argument("--report", action="store_true", help="print the README's table from the manifest")
    parser.add_argument("--epochs", type=int, help="override every reference's epochs (to try the script out)")
    parser.add_argument("--train-images", type=int, help="train on this many images (to try the script out)")


def parse_training_options(parser: argparse.ArgumentParser, report: Callable[[], str]) -> argparse.Namespace | None:
    """Parse the arguments, set the thread count; with --report print ``report()`` and return None (nothing to train)."""
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.report:
        print(report())
        return None
    return args


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(REFERENCES),
                        help="train these (again); each replaces the shipped one only if not worse on validation")
    parser.add_argument("--replace", action="store_true", help="with --only: replace the shipped ones whatever "
                        "their validation MSE")
    parser.add_argument("--select", nargs="+", choices=sorted(REFERENCES), help="compare flat and spatial codes")
    parser.add_argument("--select-epochs", type=int, default=2)
    parser.add_argument("--candidates", nargs="+", choices=sorted(CANDIDATES),
                        default=["flat, width 32", "spatial, width 32", "spatial, width 64"])
    parser.add_argument("--select-images", type=int, default=6000, help="train images for --select (0: all)")
    parser.add_argument("--select-batch", type=int, default=RECIPE["batch_size"], help="batch size for --select")
    parser.add_argument("--import-gpu", type=Path, metavar="BUNDLE",
                        help="adopt the models of benchmarks/gpu_suite.py's gpu_references.pt that beat the shipped "
                             "ones on the validation split (with --suite: its gpu_suite.json)")
    parser.add_argument("--suite", type=Path, default=HERE / "results" / "gpu_suite.json")
    add_training_options(parser)
    args = parse_training_options(parser, report)
    if args is None:
        return 0
    if args.import_gpu:
        command = _common.command_line("train_references.py", sys.argv[1:])
        import_gpu(args.import_gpu, args.suite, command)
        print(report())
        return 0
    if args.select:
        rows = [row for name in args.select
                for row in select(name, args.select_epochs, args.select_images, args.candidates, args.select_batch)]
        with open(SELECTION, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
        return 0
    names = args.only or [n for n in REFERENCES if n not in pt.pretrained_names()]
    command = _common.command_line("train_references.py", sys.argv[1:])
    for name in names:
        spec = dict(REFERENCES[name], **({"epochs": args.epochs} if args.epochs else {}))
        row = train_reference(name, spec, args.work, command, args.train_images, args.replace)
        if row is None:
            continue
        add_to_manifest(row)  # after each model: an interruption loses at most the one in progress
        print(json.dumps({k: row[k] for k in ("name", "epochs", "wall_seconds", "test_mse", "test_psnr")}))
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
