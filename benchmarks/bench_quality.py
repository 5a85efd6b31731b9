"""Reconstruction quality on the real test split: the course's recipe against PCA and published numbers.

    # the laptop-profile tables of benchmarks/README.md ("Reconstruction quality")
    COURSE_DATA_DIR=/work/shared/datasets flock /tmp/course-cpu.lock \\
        .venv/bin/python benchmarks/bench_quality.py --dataset cifar10 --latents 64 128 256 384
    flock /tmp/course-cpu.lock .venv/bin/python benchmarks/bench_quality.py --dataset fashion-mnist \\
        --latents 196 --candidates recommended recommended-spatial kapilsh

    # one tuning run: a named candidate, or the recipe with one training setting changed, scored on the
    # validation split (5,000 images held out of train by cu.validation_split, never trained on)
    ... bench_quality.py --dataset fashion-mnist --latents 196 --candidates w32-c1 --lr 5e-3 --score-on validation

    # the whole tuning grid of benchmarks/README.md ("How the recipe was chosen"), on the validation split
    COURSE_DATA_DIR=/work/shared/datasets flock /tmp/course-cpu.lock \\
        .venv/bin/python benchmarks/bench_quality.py --tuning-grid --json benchmarks/results/tuning.jsonl

    # training speed only: cu.fit images/s per candidate at batch 32 and 128, round-robin
    ... bench_quality.py --dataset cifar10 --latents 256 --candidates recommended w32-c1 --speed

    # a long run in chunks (resumable; rerun until it says finished): 3 more of 24 epochs, then score and record
    ... bench_quality.py --dataset cifar10 --latents 256 --seeds 0 --candidates recommended \\
        --train-images 50000 --epochs 24 --chunk-epochs 3 --checkpoint /tmp/q/long_cifar256.pt \\
        --json benchmarks/results/long_run.jsonl

    # the median tables of stored records
    .venv/bin/python benchmarks/bench_quality.py --dataset cifar10 --report benchmarks/results/quality.jsonl

Every contender is trained with ``cu.fit`` on the same training subset (the profile's size
unless ``--train-images``), with the same seed, and scored with ``cu.evaluate`` on the whole
test split (10,000 images unless ``--test-images``): per-pixel MSE on [0, 1] and the PSNR of
that mean. Settings are chosen with ``--score-on validation`` instead: the training subset is then
drawn from the train split minus ``cu.validation_split``'s 5,000 held-out images, which score it;
the test split is not touched. Every record says which split scored it (``scored_on``).
``--pca`` adds ``cu.pca_baseline`` with as many components as the code has values, fitted on
the full train split (less the validation images when scoring on them) and on the same subset
the networks see. Images/second are
``cu.fit``'s own (training steps only), the median over epochs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import course_utils as cu
from _common import Interference, fit_throughput, load_average, machine_line, md_table, round_robin

# Reference numbers (test MSE on [0, 1]): UvA DL tutorial 9's published results, and the PCA and
# kapilsh figures the course's specification quotes.
UVA_TUTORIAL9 = {64: 0.0071, 128: 0.0041, 256: 0.0021, 384: 0.0013}  # CIFAR-10, 500 epochs, RTX 3090
UVA_MINUTES_PER_MODEL = 13.0
PCA_REFERENCE = {("cifar10", 256): 0.00225, ("cifar10", 200): 0.00302, ("fashion-mnist", 196): 0.00389}
KAPILSH_REFERENCE = 0.0107  # Fashion-MNIST, its own settings, 6 epochs


def _conv(widths, stages: int | None = None, **kw) -> Callable:
    """Return a builder of a cu.ConvAutoencoder with ``widths`` for CIFAR-10 (3 stages) or Fashion-MNIST (2)."""
    def build(shape, latent, bottleneck="flat"):
        c, size = shape[0], shape[-1]
        w = widths[:stages] if stages else widths if size % 8 == 0 else widths[:2]  # 28 => 14 => 7 only
        if bottleneck == "spatial":
            area = (size // 2 ** len(w)) ** 2
            latent = latent // area
        return cu.ConvAutoencoder(size, c, w, latent, bottleneck, **kw)
    return build


def _recommended(fixed: str | None = None) -> Callable:
    return lambda shape, latent, bottleneck="flat": cu.recommended_autoencoder(shape, latent, fixed or bottleneck)


def _kapilsh(shape, latent, bottleneck="flat"):
    if tuple(shape) != (1, 28, 28) or latent != 196:
        raise SystemExit("The kapilsh replica is fixed: Fashion-MNIST (1x28x28) with a 196-value code.")
    return cu.KapilshAutoencoder()


# name -> (builder(image_shape, latent), training settings that differ from cu.RECOMMENDED_TRAINING)
CANDIDATES: dict[str, tuple[Callable, dict]] = {
    "recommended": (_recommended(), {}),
    "recommended-spatial": (_recommended("spatial"), {}),  # always spatial, whatever --bottleneck says
    "kapilsh": (_kapilsh, {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "schedule": None, "batch_size": 32}),
    # the tuning space explored for the recipe (see benchmarks/README.md)
    "w32-c1": (_conv((32, 64, 128)), {}),
    "w32-c1-bn": (_conv((32, 64, 128), batch_norm=True), {}),
    "w32-c1-bn-linear": (_conv((32, 64, 128), batch_norm=True, output_activation=None), {}),
    "w32-c1-gelu": (_conv((32, 64, 128), activation="gelu"), {}),
    "w32-c1-silu": (_conv((32, 64, 128), activation="silu"), {}),
    "w32-c1-lrelu": (_conv((32, 64, 128), activation="leaky_relu"), {}),
    "w32-c1-linear": (_conv((32, 64, 128), output_activation=None), {}),
    "w32-c1-nearest": (_conv((32, 64, 128), upsample="nearest"), {}),
    "w32-c1-k3": (_conv((32, 64, 128), kernel_size=3), {}),
    "w48-c1": (_conv((48, 96, 192)), {}),
    "w48-c1-bn": (_conv((48, 96, 192), batch_norm=True), {}),
    "w64-c1-bn": (_conv((64, 128, 256), batch_norm=True), {}),
    "w32-2stage-bn": (_conv((32, 64), stages=2, batch_norm=True), {}),
    "w48-2stage-bn": (_conv((48, 96), stages=2, batch_norm=True), {}),
    "w64-2stage-bn": (_conv((64, 128), stages=2, batch_norm=True), {}),
    "w32-1stage-bn": (_conv((32,), stages=1, batch_norm=True), {}),
    "w32-c2-bn": (_conv((32, 64, 128), convs_per_stage=2, batch_norm=True), {}),
    "w32-c1-bn-gelu": (_conv((32, 64, 128), batch_norm=True, activation="gelu"), {}),
    "w32-c1-bn-nearest": (_conv((32, 64, 128), batch_norm=True, upsample="nearest"), {}),
    "w64-c1": (_conv((64, 128, 256)), {}),
    "w16-c1": (_conv((16, 32, 64)), {}),
    "w32-c2": (_conv((32, 64, 128), convs_per_stage=2), {}),
    "w16-c2": (_conv((16, 32, 64), convs_per_stage=2), {}),
    "w64-128-256-c2-gelu": (_conv((64, 128, 256), convs_per_stage=2, activation="gelu"), {}),
}


# The tuning grid: every setting tried while choosing RECOMMENDED_TRAINING and recommended_autoencoder,
# one change at a time; (dataset, code size, bottleneck, candidate, training settings changed, note).
# "w32-c1" on Fashion-MNIST and "w32-2stage-bn" on CIFAR-10 are the widths (32, 64) of the recipe's model.
TUNING_GRID: list[tuple[str, int, str, str, dict, str]] = [
    ("fashion-mnist", 196, "flat", "w32-c1", {"lr": 2e-3, "batch_size": 128}, "first draft: no batch norm, lr 2e-3"),
    ("fashion-mnist", 196, "spatial", "w32-c1", {"lr": 2e-3, "batch_size": 128}, "first draft: no batch norm, lr 2e-3"),
    ("fashion-mnist", 196, "spatial", "kapilsh", {}, "reference: kapilsh at its own settings"),
    ("fashion-mnist", 196, "spatial", "w32-c1", {"lr": 5e-3, "batch_size": 128}, ""),
    ("fashion-mnist", 196, "spatial", "w32-c1-bn", {"lr": 5e-3, "batch_size": 128}, ""),
    ("fashion-mnist", 196, "spatial", "w32-c1", {"lr": 2e-3, "batch_size": 32}, ""),
    ("fashion-mnist", 196, "spatial", "w32-c1-linear", {"lr": 2e-3, "batch_size": 128}, ""),
    ("fashion-mnist", 196, "spatial", "w32-c1-bn", {"lr": 5e-3, "batch_size": 32}, "the recipe"),
    ("fashion-mnist", 196, "spatial", "w32-c1-bn", {"lr": 5e-3, "batch_size": 64}, ""),
    ("fashion-mnist", 196, "spatial", "w32-c1-bn", {"lr": 1e-2, "batch_size": 128}, ""),
    ("fashion-mnist", 196, "spatial", "w64-c1", {"lr": 5e-3, "batch_size": 64}, ""),
    ("fashion-mnist", 196, "spatial", "w48-c1-bn", {"lr": 5e-3, "batch_size": 32}, ""),
    ("fashion-mnist", 196, "spatial", "w32-c1-bn-gelu", {"lr": 5e-3, "batch_size": 32}, ""),
    ("fashion-mnist", 196, "spatial", "w32-c1-bn-linear", {"lr": 5e-3, "batch_size": 32}, ""),
    ("fashion-mnist", 196, "spatial", "w32-c1-bn", {"lr": 3e-3, "batch_size": 32}, ""),
    ("fashion-mnist", 196, "flat", "w32-c1-bn", {"lr": 5e-3, "batch_size": 32}, "the recipe"),
    ("cifar10", 256, "flat", "w32-c1-bn", {"lr": 5e-3, "batch_size": 32}, ""),
    ("cifar10", 256, "flat", "w32-c1", {"lr": 2e-3, "batch_size": 32}, ""),
    ("cifar10", 256, "flat", "w32-c1-bn", {"lr": 5e-3, "batch_size": 128}, ""),
    ("cifar10", 256, "flat", "w32-2stage-bn", {"lr": 5e-3, "batch_size": 32}, "the recipe"),
    ("cifar10", 256, "flat", "w32-c1-bn", {"lr": 1e-2, "batch_size": 32}, ""),
    ("cifar10", 256, "spatial", "w32-c1-bn", {"lr": 5e-3, "batch_size": 32}, ""),
    ("cifar10", 256, "spatial", "w32-2stage-bn", {"lr": 5e-3, "batch_size": 32}, "the recipe"),
    ("cifar10", 256, "flat", "w32-2stage-bn", {"lr": 3e-3, "batch_size": 32}, ""),
    ("cifar10", 256, "flat", "w32-1stage-bn", {"lr": 5e-3, "batch_size": 32}, ""),
    ("cifar10", 256, "flat", "w32-2stage-bn", {"lr": 3e-3, "batch_size": 16}, ""),
    ("cifar10", 256, "flat", "w48-2stage-bn", {"lr": 5e-3, "batch_size": 32}, ""),
]


def compute_comparison(latent: int, train_images: int, epochs: int) -> str:
    """Return a line comparing the training compute of UvA tutorial 9 (500 epochs of 45k) with ours."""
    theirs = cu.flops_per_image(cu.UvATutorial9Autoencoder(latent), (3, 32, 32))
    ours = cu.flops_per_image(cu.recommended_autoencoder((3, 32, 32), latent), (3, 32, 32))
    t_total, o_total = theirs * 45_000 * 500, ours * train_images * epochs
    return (f"training compute at latent {latent}: UvA tutorial 9 {theirs / 1e6:.1f} MFLOP/image x 45,000 x 500 "
            f"epochs = {t_total / 1e15:.2f} PFLOP; recommended {ours / 1e6:.1f} MFLOP/image x {train_images:,} x "
            f"{epochs} epochs = {o_total / 1e15:.4f} PFLOP ({t_total / o_total:,.0f}x less)")


def train_and_score(name: str, image_shape, latent: int, train, test, epochs: int, seed: int,
                    overrides: dict, bottleneck: str = "flat") -> dict:
    """Train candidate ``name`` for ``epochs`` on ``train`` and return its scores on ``test``."""
    build, settings = CANDIDATES[name]
    recipe = {**cu.RECOMMENDED_TRAINING, **settings, **overrides}
    cu.seed_everything(seed)
    model = build(image_shape, latent, bottleneck)
    t0 = time.perf_counter()
    history = cu.fit(model, train, epochs=epochs, seed=seed, progress=False, device="cpu", **recipe)
    seconds = time.perf_counter() - t0
    scores = cu.evaluate(model, test, ssim=False)  # ``test``: whichever split scores this run
    return {"candidate": display_name(name, bottleneck), "latent": latent, "code_size": int(model.code_size),
            "seed": seed, "mse": scores["mse"],
            "psnr": scores["psnr"], "parameters": cu.count_parameters(model),
            "mflops_per_image": cu.flops_per_image(model, image_shape) / 1e6,
            "train_images_per_second": statistics.median(history["images_per_second"]),
            "train_seconds": seconds, "final_train_loss": history.last["train_loss"],
            "settings": {k: v for k, v in recipe.items()}}


def load(dataset: str, train_images: int | None, test_images: int | None, seed: int, score_on: str = "test"):
    """Return (train pool, train subset, scoring set) of ``dataset``: the test split, or the validation split.

    With ``score_on="validation"`` the 5,000 images of ``cu.validation_split`` are held out of the train
    split: the pool (and so the subset and PCA) never contains them, and the test split is not loaded.
    """
    full = cu.load_dataset(dataset, "train")
    if score_on == "validation":
        full, scoring = cu.validation_split(full)
    else:
        scoring = cu.load_dataset(dataset, "test")
    return full, full.subset(train_images, seed=seed), scoring.subset(test_images, seed=seed)


def tuning_grid(args, profile, machine: str) -> int:
    """Train every setting of TUNING_GRID in the profile's budget, score it on the validation split, record it."""
    train_images = args.train_images if args.train_images is not None else profile.train_images
    epochs = args.epochs or profile.epochs
    budget = f" --train-images {train_images} --epochs {epochs}" + (
        f" --test-images {args.test_images}" if args.test_images else "")
    rows = args.grid_rows or range(1, len(TUNING_GRID) + 1)
    data = {}
    for i in rows:
        dataset, latent, bottleneck, name, overrides, note = TUNING_GRID[i - 1]
        if dataset not in data:
            data[dataset] = load(dataset, train_images, args.test_images, seed=0, score_on="validation")
        full, train, val = data[dataset]
        r = train_and_score(name, full.image_shape, latent, train, val, epochs, 0, overrides, bottleneck)
        changed = "".join(f" --{k.replace('_', '-')} {v:g}" for k, v in overrides.items())
        command = (f"python benchmarks/bench_quality.py --dataset {dataset} --latents {latent} --bottleneck "
                   f"{bottleneck} --candidates {name}{changed}{budget} --score-on validation")
        r.update(dataset=dataset, train_images=len(train), scored_on="validation", score_images=len(val),
                 epochs=epochs, machine=machine, command=command, note=note, grid_row=i)
        print_run(r, f" [grid row {i} of {len(TUNING_GRID)}, scored on validation]")
        append_records(args.json, [r])
    return 0


def pca_rows(dataset: str, full, subset, test, latents) -> list[dict]:
    """Return PCA scores with ``latent`` components, fitted on the full train split and on ``subset``."""
    rows = []
    for latent in latents:
        for label, train in (("PCA (full train)", full), (f"PCA ({len(subset):,} train)", subset)):
            t0 = time.perf_counter()
            r = cu.pca_baseline(train, test, latent)
            rows.append({"candidate": label, "latent": latent, "code_size": latent, "mse": r["mse"],
                         "psnr": r["psnr"], "fit_seconds": time.perf_counter() - t0,
                         "train_images": len(train)})
    return rows


def median_rows(rows: list[dict]) -> list[dict]:
    """Collapse repeats (one row per seed) into medians per (candidate, latent)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["candidate"], r["latent"]), []).append(r)
    out = []
    for (name, latent), rs in groups.items():
        m = dict(rs[0])
        for key in ("mse", "psnr", "train_images_per_second", "train_seconds"):
            if key in m:
                m[key] = statistics.median(r[key] for r in rs)
        m["repeats"] = len(rs)
        m["mse_all"] = [r["mse"] for r in rs]
        out.append(m)
    return out


def speed_table(args, train, latents, batch_sizes=(32, 128), rounds: int = 3, images: int = 2048) -> int:
    """Print cu.fit's training images/s per candidate and batch size: round-robin rounds, medians."""
    data = train.subset(images, seed=0)

    def job(name, latent, bs):
        build, settings = CANDIDATES[name]
        recipe = {**cu.RECOMMENDED_TRAINING, **settings}
        recipe.pop("batch_size")

        def measure(r):
            cu.seed_everything(r)
            return fit_throughput(build(train.image_shape, latent, args.bottleneck), data, bs, 1, device="cpu",
                                  seed=r, **recipe)
        return measure

    jobs = {(name, latent, bs): job(name, latent, bs)
            for latent in latents for name in args.candidates for bs in batch_sizes}
    interference, load_before = Interference(), load_average()
    runs = round_robin(jobs, rounds, interference)
    print(f"# cu.fit images/s on {len(data):,} {args.dataset} images per epoch, each candidate's own training "
          f"settings; median of {rounds} round-robin rounds, each a fresh model trained one warm-up epoch and one "
          f"timed epoch; 1-minute load average {load_before:.1f} before, {load_average():.1f} after. "
          f"{interference.note()}")
    rows = []
    for latent in latents:
        for name in args.candidates:
            model = CANDIDATES[name][0](train.image_shape, latent, args.bottleneck)
            row = {"model": display_name(name, args.bottleneck), "code": model.code_size,
                   "MFLOP/img (train step)": f"{cu.flops_per_image(model, train.image_shape) / 1e6:.1f}"}
            for bs in batch_sizes:
                t = runs[(name, latent, bs)]
                row[f"img/s, batch {bs}"] = f"{t.images_per_second:,.0f} ({min(t.rates):,.0f}-{max(t.rates):,.0f})"
            rows.append(row)
    print(md_table(rows))
    return 0


def display_name(name: str, bottleneck: str) -> str:
    """Return the candidate's name as tables show it: marked [spatial] when --bottleneck made it so."""
    fixed = name == "kapilsh" or name.endswith("-spatial")  # their bottleneck does not follow --bottleneck
    return f"{name} [spatial]" if bottleneck == "spatial" and not fixed else name


def print_run(record: dict, progress: str = "") -> None:
    """Print one trained model's scores and training speed on one line (``progress``: how far a long run is)."""
    seconds = record.get("train_seconds", record.get("train_seconds_total"))
    split = record.get("scored_on", "test")
    print(f"{record['candidate']:24s} code {record['code_size']:4d} seed {record['seed']}{progress}: {split} MSE "
          f"{record['mse']:.5f} (PSNR {record['psnr']:.2f} dB), {record['train_images_per_second']:,.0f} img/s, "
          f"{seconds:.0f} s of training", flush=True)


def append_records(path: Path | None, records: list[dict]) -> None:
    """Append the records to the JSON-lines file ``path`` (nothing when None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.writelines(json.dumps(r, default=str) + "\n" for r in records)


def long_run_chunk(args, train, test, epochs: int, overrides: dict, machine: str, command: str) -> int:
    """Train ``--chunk-epochs`` more epochs of a long run kept in ``--checkpoint``; score and record it."""
    if len(args.candidates) != 1 or len(args.latents or []) != 1 or len(args.seeds) != 1:
        raise SystemExit("--checkpoint needs exactly one --candidates, one --latents and one --seeds value.")
    name, latent, seed = args.candidates[0], args.latents[0], args.seeds[0]
    build, settings = CANDIDATES[name]
    recipe = {**cu.RECOMMENDED_TRAINING, **settings, **overrides}
    done = 0
    if args.checkpoint.is_file():
        done = int(cu.load_checkpoint(args.checkpoint)["epoch"])
    if done >= epochs:
        print(f"{args.checkpoint} has finished all {epochs} epochs.")
        return 0
    cu.seed_everything(seed)
    model = build(train.image_shape, latent, args.bottleneck)
    n_batches = len(train) // recipe["batch_size"] if len(train) >= 2 * recipe["batch_size"] else 1
    stop = (done + (args.chunk_epochs or epochs)) * n_batches
    history = cu.fit(model, train, epochs=epochs, seed=seed, progress=False, device="cpu", checkpoint=args.checkpoint,
                     resume=True, stop_after_steps=stop, **recipe)
    scores = cu.evaluate(model, test, ssim=False)
    record = {"candidate": name, "latent": latent, "code_size": model.code_size, "seed": seed,
              "epochs_done": len(history), "epochs": epochs, "train_images": len(train),
              "images_seen": len(history) * n_batches * recipe["batch_size"], "mse": scores["mse"],
              "psnr": scores["psnr"], "train_seconds_total": sum(history["seconds"]),
              "train_images_per_second": statistics.median(history["images_per_second"][done:]),
              "settings": recipe, "dataset": args.dataset, "machine": machine, "command": command}
    print_run(record, f", epoch {len(history)}/{epochs}, {record['images_seen']:,} images seen")
    append_records(args.json, [record])
    return 0


def report(path: Path, dataset: str) -> int:
    """Print the median table of the records of ``dataset`` stored in the JSON-lines file ``path``."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    records = [r for r in records if r.get("dataset") == dataset]
    if not records:
        print(f"No records of {dataset} in {path}.")
        return 1
    pca = {(r["candidate"], r["latent"]): r for r in records if "parameters" not in r}  # last one wins
    runs: dict[tuple, dict] = {}
    for r in records:
        if "parameters" in r:  # the last record of each (model, settings, budget, seed) wins
            key = (r["candidate"], r["latent"], r["seed"], r["train_images"], r["epochs"],
                   json.dumps(r["settings"], sort_keys=True))
            runs[key] = r
    groups: dict[tuple, list[dict]] = {}
    for key, r in runs.items():
        groups.setdefault(key[:2] + key[3:], []).append(r)
    print(f"# {dataset}: {len(records)} records from {path}")
    for (name, latent, n, epochs, settings), rs in sorted(groups.items(), key=lambda kv: kv[0][:2]):
        print(f"#   {name} code {latent}: {len(rs)} seed(s), {n:,} train images x {epochs} epochs, {settings}")
    for m in sorted({r["machine"] for r in records}):
        print(f"# machine: {m}")
    if dataset == "cifar10":
        nets = [r for r in records if "parameters" in r and r["candidate"] == "recommended"]
        if nets:
            print(f"# {compute_comparison(256, nets[0]['train_images'], nets[0]['epochs'])}")
    print(markdown(dataset, list(pca.values()) + median_rows([r for rs in groups.values() for r in rs])))
    return 0


def markdown(dataset: str, rows: list[dict], split: str = "test") -> str:
    """Return the rows as a Markdown table with the published references beside them."""
    table = []
    for r in sorted(rows, key=lambda r: (r["latent"], r["mse"])):
        ref = []
        if dataset == "cifar10" and r["latent"] in UVA_TUTORIAL9:
            ref.append(f"UvA 500 ep: {UVA_TUTORIAL9[r['latent']]}")
        if (dataset, r["latent"]) in PCA_REFERENCE:
            ref.append(f"PCA (reference): {PCA_REFERENCE[(dataset, r['latent'])]}")
        if r["candidate"] == "kapilsh":
            ref.append(f"kapilsh 6 ep: {KAPILSH_REFERENCE}")
        trained = "parameters" in r
        several = r.get("repeats", 1) > 1
        table.append({
            "model": r["candidate"] + (f" (median of {r['repeats']})" if several else ""), "code": r["code_size"],
            f"{split} MSE": f"{r['mse']:.5f}"
            + (f" ({min(r['mse_all']):.5f}-{max(r['mse_all']):.5f})" if several else ""),
            "PSNR dB": f"{r['psnr']:.2f}", "params": f"{r['parameters']:,}" if trained else "-",
            "MFLOP/img (train step)": f"{r['mflops_per_image']:.1f}" if trained else "-",
            "train img/s": f"{r['train_images_per_second']:,.0f}" if trained else "-",
            "train s": f"{r['train_seconds']:.0f}" if trained else f"{r['fit_seconds']:.0f} (PCA fit)",
            "reference": "; ".join(ref)})
    return md_table(table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="cifar10", choices=["cifar10", "fashion-mnist"])
    parser.add_argument("--latents", type=int, nargs="+", default=None,
                        help="code sizes (default: 64 128 256 384 for CIFAR-10, 196 for Fashion-MNIST)")
    parser.add_argument("--candidates", nargs="*", default=["recommended"], choices=sorted(CANDIDATES),
                        help="models to train (none: only --pca)")
    parser.add_argument("--profile", default="laptop", help="sizes train subset, epochs (default laptop)")
    parser.add_argument("--train-images", type=int, default=None, help="override the profile's train size")
    parser.add_argument("--test-images", type=int, default=None,
                        help="score on this many images (default: the whole test or validation split)")
    parser.add_argument("--score-on", default="test", choices=["test", "validation"],
                        help="validation: hold cu.validation_split's 5,000 images out of train and score on them "
                             "(for choosing settings); test: final numbers")
    parser.add_argument("--tuning-grid", action="store_true",
                        help="train and score every row of TUNING_GRID on the validation split (needs --json)")
    parser.add_argument("--grid-rows", type=int, nargs="+", default=None,
                        help="with --tuning-grid: only these rows (1-based), e.g. to finish an interrupted grid")
    parser.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="repeat per seed; report medians")
    parser.add_argument("--bottleneck", default="flat", choices=["flat", "spatial"],
                        help="bottleneck of the candidates (spatial: latent = channels x h x w)")
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--optimizer", default=None)
    parser.add_argument("--schedule", default=None, help="onecycle, cosine or none")
    parser.add_argument("--weight-decay", type=float, default=None)
    parser.add_argument("--pca", action="store_true", help="add PCA baselines (full train and same subset)")
    parser.add_argument("--json", type=Path, default=None, help="append the records to this JSON-lines file")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="long run in chunks: resume from / save to this file (one candidate, latent, seed)")
    parser.add_argument("--chunk-epochs", type=int, default=None,
                        help="with --checkpoint: train this many more epochs, score, save and stop")
    parser.add_argument("--speed", action="store_true",
                        help="train nothing to the end: cu.fit images/s of each candidate, batch 32 and 128, "
                             "interleaved rounds, medians")
    parser.add_argument("--report", type=Path, default=None,
                        help="train nothing: print the medians of the records in this JSON-lines file")
    args = parser.parse_args()

    profile = cu.get_profile(args.profile)
    latents = args.latents or ([64, 128, 256, 384] if args.dataset == "cifar10" else [196])
    train_images = args.train_images if args.train_images is not None else profile.train_images
    epochs = args.epochs or profile.epochs
    overrides = {k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size),
                                   ("optimizer", args.optimizer), ("weight_decay", args.weight_decay)) if v is not None}
    if args.schedule is not None:
        overrides["schedule"] = None if args.schedule == "none" else args.schedule

    if args.report:
        return report(args.report, args.dataset)
    machine, command = machine_line(stamp=True), " ".join(["python", *sys.argv])
    print(f"# machine: {machine}")
    print(f"# command: {command}")
    if args.tuning_grid:
        if args.json is None:
            raise SystemExit("--tuning-grid records its rows: give --json FILE.")
        return tuning_grid(args, profile, machine)
    full, train, test = load(args.dataset, train_images, args.test_images, seed=0, score_on=args.score_on)
    print(f"# data: {args.dataset}, train {len(train):,} of {len(full):,}, scored on {args.score_on} {len(test):,}, "
          f"{epochs} epochs, settings {dict(cu.RECOMMENDED_TRAINING, **overrides)}", flush=True)
    if args.speed:
        return speed_table(args, train, latents)
    if args.checkpoint is not None:
        return long_run_chunk(args, train, test, epochs, overrides, machine, command)
    rows = pca_rows(args.dataset, full, train, test, latents) if args.pca else []
    runs = []
    for latent in latents:
        for name in args.candidates:
            for seed in args.seeds:
                r = train_and_score(name, full.image_shape, latent, train, test, epochs, seed, overrides,
                                    args.bottleneck)
                r.update(dataset=args.dataset, train_images=len(train), scored_on=args.score_on,
                         score_images=len(test), epochs=epochs)
                runs.append(r)
                print_run(r)
    # PCA rows and one row per trained model and seed
    append_records(args.json, [{**r, "dataset": args.dataset, "machine": machine, "command": command}
                               for r in rows + runs])
    print()
    print(markdown(args.dataset, rows + median_rows(runs), args.score_on))
    return 0


if __name__ == "__main__":
    sys.exit(main())
