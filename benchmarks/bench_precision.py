"""Does bf16 autocast cost quality? The course recipe trained twice, same seed, float32 vs bf16.

    COURSE_DATA_DIR=/work/shared/datasets flock /tmp/course-cpu.lock \\
        .venv/bin/python benchmarks/bench_precision.py --json benchmarks/results/precision.jsonl

`cu.fit` picks bf16 autocast by default on a CPU with native bf16 instructions (and on CUDA).
This script trains the recommended autoencoder with `RECOMMENDED_TRAINING` in the laptop budget
(12,000 training images, 4 epochs) with ``amp=False`` and with ``amp="bf16"``, everything else
equal (same seed, same images, channels_last and a fused AdamW in both), and scores both on a
validation split carved from the training split (5,000 images never trained on: the numbers
that decide the default) and on the test split (reported, never used to decide). Only quality
is compared here: speed is measured by bench_speed.py and bench_efficiency.py on a quiet machine
(these runs may share the CPU, so their train_seconds are not a speed measurement).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path


import course_utils as cu
from _common import machine_line, write_readme_section

TITLE = "Mixed precision and quality"

CASES = {  # name: (dataset, code size, bottleneck)
    "fashion-mnist, 196 spatial": ("fashion-mnist", 196, "spatial"),
    "cifar10, 256 flat": ("cifar10", 256, "flat"),
    "cifar10, 256 spatial": ("cifar10", 256, "spatial"),
}


def run_case(name: str, seeds: list[int], epochs: int, n_train: int, n_test: int, out: Path | None) -> list[dict]:
    dataset, code, bottleneck = CASES[name]
    full = cu.load_dataset(dataset, "train")
    rest, val = cu.validation_split(full, 5000)
    train = rest.subset(n_train)
    test = cu.load_dataset(dataset, "test").subset(n_test)
    rows = []
    for seed in seeds:
        for amp in (False, "bf16"):
            cu.seed_everything(seed)
            model = cu.recommended_autoencoder(train.image_shape, code, bottleneck)
            t0 = time.perf_counter()
            cu.fit(model, train, epochs=epochs, seed=seed, amp=amp, channels_last=True, fused=True,
                   device="cpu", progress=False, **cu.RECOMMENDED_TRAINING)
            seconds = time.perf_counter() - t0
            rows.append({"case": name, "seed": seed, "amp": amp or "float32", "epochs": epochs,
                         "train_images": len(train), "val_mse": cu.evaluate(model, val, ssim=False)["mse"],
                         "test_mse": cu.evaluate(model, test, ssim=False)["mse"], "train_seconds": seconds,
                         "machine": machine_line()})
            print(json.dumps(rows[-1]), flush=True)
            if out is not None:  # row by row: an interrupted run keeps what it measured
                with out.open("a") as f:
                    f.write(json.dumps(rows[-1]) + "\n")
    return rows


def summary(rows: list[dict]) -> str:
    """Return a markdown table: per case, mean val/test MSE in float32 and bf16 and the relative change."""
    lines = ["| recipe | seeds | val MSE float32 | val MSE bf16 | bf16 vs float32 (val) | test MSE float32 | "
             "test MSE bf16 |", "|---|---:|---:|---:|---:|---:|---:|"]
    for case in dict.fromkeys(r["case"] for r in rows):
        by = {amp: [r for r in rows if r["case"] == case and r["amp"] == amp] for amp in ("float32", "bf16")}
        mean = lambda amp, key: sum(r[key] for r in by[amp]) / len(by[amp])
        change = mean("bf16", "val_mse") / mean("float32", "val_mse") - 1
        lines.append(f"| {case} | {len(by['bf16'])} | {mean('float32', 'val_mse'):.5f} | {mean('bf16', 'val_mse'):.5f} "
                     f"| {change:+.2%} | {mean('float32', 'test_mse'):.5f} | {mean('bf16', 'test_mse'):.5f} |")
    return "\n".join(lines)


def readme_section(rows: list[dict], source: Path) -> str:
    """Return the README section: what was compared, the table, and the verdict computed from it."""
    worst = max(_change(rows, case) for case in dict.fromkeys(r["case"] for r in rows))
    keep = "bf16 stays the default where the CPU has native bf16" if worst < 0.01 else \
        "bf16 costs quality here: make float32 the default"
    seeds = [(case, sorted(r["val_mse"] for r in rows if r["case"] == case and r["amp"] == "float32"))
             for case in dict.fromkeys(r["case"] for r in rows)]
    spread = [(case, v[-1] / v[0] - 1) for case, v in seeds if len(v) > 1]
    compare = (f"for comparison, changing the seed moved float32 validation MSE by {spread[0][1]:.2%} "
               f"({spread[0][0]})" if spread else "no case was run with two seeds to compare with")
    return (f"Measured by `benchmarks/bench_precision.py` (rows with machine and date in `{source}`): the "
            "recommended autoencoder trained with `RECOMMENDED_TRAINING` in the laptop budget (12,000 images, "
            "4 epochs), same seed and images, `amp=False` against `amp=\"bf16\"` (channels_last and fused AdamW "
            "in both). Validation MSE on 5,000 training images held out of training decides; test MSE (2,000 "
            "images) is reported.\n\n" + summary(rows) + f"\n\n**Verdict**: the largest change of validation MSE "
            f"from bf16 autocast is {worst:+.2%} ({compare}); with a threshold of 1%, {keep}.")


def _change(rows: list[dict], case: str) -> float:
    mean = lambda amp: statistics.mean(r["val_mse"] for r in rows if r["case"] == case and r["amp"] == amp)
    return mean("bf16") / mean("float32") - 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--train-images", type=int, default=12_000)
    parser.add_argument("--test-images", type=int, default=2_000)
    parser.add_argument("--json", type=Path, help="append one JSON row per run to this file")
    parser.add_argument("--report", type=Path, help="only print the summary of rows already in this file")
    parser.add_argument("--readme", action="store_true", help="with --report, write the summary into benchmarks/README.md")
    args = parser.parse_args()
    if args.report:
        rows = [json.loads(line) for line in args.report.read_text().splitlines() if line.strip()]
        section = readme_section(rows, args.report)
        print(section)
        if args.readme:
            write_readme_section(TITLE, section)
        return 0
    rows = [row for case in args.cases for row in run_case(case, args.seeds, args.epochs, args.train_images,
                                                            args.test_images, args.json)]
    print(summary(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
