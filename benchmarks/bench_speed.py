"""Training speed: the seed tutorials' own loop against cu.fit with its defaults, on each replica's data and batch.

    COURSE_DATA_DIR=/work/shared/datasets flock /tmp/course-cpu.lock \\
        .venv/bin/python benchmarks/bench_speed.py --readme

    # a seconds-long check of the script itself (tests/test_benchmarks.py runs it)
    BENCH_MAX_OTHERS=1 COURSE_DATA_DIR=/work/shared/datasets \\
        .venv/bin/python benchmarks/bench_speed.py --tiny --readme-path /tmp/README.md

For each seed replica, side by side in one process and on the same images:

* **seed loop**: ``fit_tutorial_style``: PIL images through a DataLoader with the seed's
  torchvision transforms, the seed's batch size, Adam, ``loss.item()`` and a device copy every step;
* **fit**: ``cu.measure_throughput`` with ``cu.fit``'s defaults (amp, channels_last and fused
  left at "auto": the very step ``fit`` runs) and the seed's optimizer (Adam, lr 1e-3), same
  model, data and batch;
* **fit itself**: ``cu.fit``'s own per-epoch timer, same settings, as a cross-check of **fit**;
* **fit, batch N**: **fit** at the larger batch sizes of ``--larger-batches``.

The target: for the Paperspace replica at the article's batch size (64), **fit** / **seed
loop** >= 2. Then, on a CPU, a table of ``cu.fit`` options one change at a time from an explicit
float32, NCHW, unfused baseline (memory layout, bf16, fused optimizer, threads, batch size), plus
fit's "auto" defaults, for the Paperspace replica and the course's recommended autoencoder.

Every measurement runs ``--rounds`` times round-robin with the others of its table (a fresh model
and seed each round, so a slow drift of a shared machine hits all alike), each time ``--repeats``
timed blocks after untimed warm-up steps; a table shows the median of all timed blocks. A
measurement during which other processes took more than 10% of the CPU ($BENCH_MAX_OTHERS) is
redone, up to 3 times. ``--readme`` replaces the "Training speed" section of benchmarks/README.md
(``--readme-path`` writes another file).
"""
from __future__ import annotations

import argparse
import sys

import torch

import course_utils as cu
from course_utils.chapters._ch05_measurements import fit_tutorial_style
from _common import (BenchRun, add_run_arguments, apply_tiny, describe_settings, fit_auto_settings, fit_throughput,
                     machine_line, md_table, publish, round_robin, verdict)

# name: (builder, dataset, seed batch, what we know about the batch)
SEEDS = {
    "GeeksforGeeks": (cu.GeeksforGeeksAutoencoder, "cifar10", 32,
                      "article's batch size not known here: 32 assumed; CIFAR-10 at 32x32 instead of its Flowers102"),
    "Paperspace": (lambda: cu.PaperspaceAutoencoder(latent=200), "cifar10", 64,
                   "latent 200, batch 64 as in the article"),
    "kapilsh": (cu.KapilshAutoencoder, "fashion-mnist", 32, "article's batch size not known here: 32 assumed"),
}
SKIPPED = {"anothertechs": "skipped: 263M parameters (two 131,072 x 1,000 Linear layers), so one Adam step reads and "
                           "writes about 4.2 GB of weights, gradients and moments (16 bytes per parameter); it "
                           "exists to show that design's cost, not to be trained on a CPU"}
SEED_OPTIMIZER = {"optimizer": "adam", "lr": 1e-3}  # the seeds' Adam; every other option is fit's default
TARGET_REPLICA, TARGET_RATIO = "Paperspace", 2.0
# the options table: one change at a time from this explicit baseline, at the course's recipe
BASELINE = {"amp": False, "channels_last": False, "fused": False}
AUTO = {"amp": "auto", "channels_last": "auto", "fused": "auto"}
RECIPE = {k: v for k, v in cu.RECOMMENDED_TRAINING.items() if k != "batch_size"}
OPTION_MODELS = {"Paperspace": lambda: cu.PaperspaceAutoencoder(latent=200),
                 "recommended": lambda: cu.recommended_autoencoder((3, 32, 32), 256)}
TINY = {"rounds": 1, "repeats": 1, "warmup": 1, "images_per_repeat": 64, "train_images": 512,
        "larger_batches": [], "replicas": [TARGET_REPLICA], "option_models": ["recommended"]}


def rate(images_per_second: float) -> str:
    """Return images/s as a whole number with thousands separators."""
    return f"{images_per_second:,.0f}"


def steps_for(args, batch_size: int) -> int:
    """Return the training steps of one timed block: about ``--images-per-repeat`` images, at least 3 steps."""
    return max(3, args.images_per_repeat // batch_size)


def replica_jobs(build, data: cu.ImageData, seed_batch: int, args, device) -> dict:
    """Return the round-robin jobs of one replica: its seed loop, fit's step, fit itself, fit at larger batches."""
    def fresh(r):
        torch.manual_seed(r)
        return build()

    def fit_step(r, batch_size):
        return cu.measure_throughput(fresh(r), data, batch_size, steps=steps_for(args, batch_size),
                                     repeats=args.repeats, warmup=args.warmup, device=device, seed=r, **SEED_OPTIMIZER)

    epoch_images = data.subset(max(args.images_per_repeat, 2 * seed_batch))
    jobs = {
        "seed loop": lambda r: fit_tutorial_style(fresh(r), data, seed_batch, epochs=args.repeats,
                                                     warmup=args.warmup, device=device, seed=r,
                                                     max_batches=steps_for(args, seed_batch) + args.warmup),
        "fit": lambda r: fit_step(r, seed_batch),
        "fit itself": lambda r: fit_throughput(fresh(r), epoch_images, seed_batch, args.repeats, device=device,
                                               seed=r, **SEED_OPTIMIZER),
    }
    for bs in args.larger_batches:
        if bs != seed_batch:
            jobs[f"fit, batch {bs}"] = lambda r, bs=bs: fit_step(r, bs)
    return jobs


def seed_table(args, device, run: BenchRun) -> tuple[list[dict], list[str], dict]:
    """Measure every replica's seed loop against cu.fit; return rows, notes and the target replica's results."""
    rows, notes, target = [], [], {}
    datasets: dict[str, cu.ImageData] = {}
    for name in args.replicas:
        build, dataset, seed_batch, note = SEEDS[name]
        if dataset not in datasets:
            datasets[dataset] = cu.load_dataset(dataset, "train").subset(args.train_images)
        runs = round_robin(replica_jobs(build, datasets[dataset], seed_batch, args, device), args.rounds,
                           run.interference)
        rates = {k: t.images_per_second for k, t in runs.items()}
        best = max((k for k in rates if k.startswith("fit, batch")), key=rates.get, default="fit")
        seed = rates["seed loop"]
        rows.append({"replica": name, "data": dataset, "seed batch": seed_batch, "seed loop": rate(seed),
                     "(waiting for data)": f"{runs['seed loop'].data_fraction:.0%}", "fit": rate(rates["fit"]),
                     "fit itself": rate(rates["fit itself"]), "fit / seed": f"**{rates['fit'] / seed:.2f}x**",
                     "fit itself / seed": f"{rates['fit itself'] / seed:.2f}x",
                     "fastest fit batch": f"{rate(rates[best])} (batch {runs[best].batch_size})",
                     "fastest / seed": f"{rates[best] / seed:.2f}x"})
        larger = [f"{t.batch_size}: {rate(t.images_per_second)}" for k, t in runs.items() if k.startswith("fit, batch")]
        notes.append(f"{name}: {note}" + (f"; fit at batch {', '.join(larger)}" if larger else "") + ".")
        if name == TARGET_REPLICA:
            target = runs
        print(md_table(rows[-1:]), flush=True)
    notes += [f"{name}: {why}." for name, why in SKIPPED.items()]
    return rows, notes, target


def target_line(runs: dict[str, cu.Throughput]) -> str:
    """Return the target's verdict, computed from the measurements, with the cross-check and the spread."""
    seed, fit, itself = runs["seed loop"], runs["fit"], runs["fit itself"]
    ratio = fit.images_per_second / seed.images_per_second
    itself_ratio = itself.images_per_second / seed.images_per_second
    gap = itself.images_per_second / fit.images_per_second - 1
    low, high = min(fit.rates) / max(seed.rates), max(fit.rates) / min(seed.rates)
    same_everywhere = verdict(low, TARGET_RATIO) == verdict(high, TARGET_RATIO)
    return (f"**Target** ({TARGET_REPLICA} replica at the article's batch {seed.batch_size}: `cu.fit` with its "
            f"defaults at least {TARGET_RATIO:.0f}x as fast as the article's own loop): "
            f"**{verdict(ratio, TARGET_RATIO)}** in this run, {ratio:.2f}x ({rate(fit.images_per_second)} vs "
            f"{rate(seed.images_per_second)} images/s). Cross-check: fit's own epoch timer gives "
            f"{rate(itself.images_per_second)} images/s, {itself_ratio:.2f}x the seed loop "
            f"({gap:+.0%} against `cu.measure_throughput`). Pairing its slowest timed block with the seed loop's "
            f"fastest gives {low:.2f}x, the other way round {high:.2f}x: "
            + ("the verdict is the same at both ends." if same_everywhere else
               "the verdict depends on which blocks are compared, so it may flip from run to run."))


def cpu_options_table(args, run: BenchRun) -> tuple[list[dict], str]:
    """Measure cu.fit's speed options one change at a time from float32/NCHW/unfused; return rows and the header."""
    data = cu.load_dataset("cifar10", "train").subset(args.train_images)
    models = {name: OPTION_MODELS[name] for name in args.option_models}
    base, threads = cu.RECOMMENDED_TRAINING["batch_size"], torch.get_num_threads()
    auto = describe_settings(fit_auto_settings("cpu", RECIPE["optimizer"]))
    cl_bf16 = {"channels_last": True, "amp": "bf16"}
    options = [(f"float32, NCHW, unfused (baseline), batch {base}", base, {}),
               (f"batch {2 * base}", 2 * base, {}), (f"batch {4 * base}", 4 * base, {}),
               ("channels_last", base, {"channels_last": True}), ("bf16 autocast", base, {"amp": "bf16"}),
               ("fused AdamW", base, {"fused": True}), ("channels_last + bf16", base, cl_bf16),
               ("channels_last + bf16 + fused AdamW", base, {**cl_bf16, "fused": True}),
               (f"fit's defaults (auto: {auto})", base, AUTO),
               (f"fit's defaults, batch {4 * base}", 4 * base, AUTO)]
    if threads > 1:
        options.append((f"1 thread instead of {threads}", base, {"threads": 1}))

    def job(build, bs, change):
        change = dict(change)
        n_threads = change.pop("threads", threads)

        def measure(r):
            torch.set_num_threads(n_threads)
            try:
                torch.manual_seed(r)
                return cu.measure_throughput(build(), data, bs, steps=steps_for(args, bs), repeats=args.repeats,
                                             warmup=args.warmup, device="cpu", seed=r,
                                             **{**RECIPE, **BASELINE, **change})
            finally:
                torch.set_num_threads(threads)
        return measure

    jobs = {(label, name): job(build, bs, change) for label, bs, change in options for name, build in models.items()}
    rates = {k: t.images_per_second for k, t in round_robin(jobs, args.rounds, run.interference).items()}
    header = "setting (one change from float32, NCHW, unfused)"
    rows = []
    for label, _, _ in options:
        row = {header: label}
        for name in models:
            v, ref = rates[(label, name)], rates[(options[0][0], name)]
            row[name] = f"{v:,.0f} ({v / ref:.2f}x)"
        rows.append(row)
    return rows, f"batch {base}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, rounds=5, repeats=2)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before each measurement")
    parser.add_argument("--images-per-repeat", type=int, default=1536)
    parser.add_argument("--train-images", type=int, default=8192, help="images the batches are drawn from")
    parser.add_argument("--larger-batches", type=int, nargs="*", default=[128, 256],
                        help="also time fit at these batch sizes")
    parser.add_argument("--replicas", nargs="+", default=list(SEEDS), choices=list(SEEDS))
    parser.add_argument("--option-models", nargs="+", default=list(OPTION_MODELS), choices=list(OPTION_MODELS),
                        help="models of the CPU options table")
    parser.add_argument("--skip-cpu-options", action="store_true")
    args = apply_tiny(parser.parse_args(), TINY)
    device = cu.get_device()
    run = BenchRun("bench_speed.py")
    print(f"# Training speed ({run.started}; {machine_line()})\n", flush=True)
    rows, notes, target = seed_table(args, device, run)
    options_rows, base = ([], "") if args.skip_cpu_options or device.type != "cpu" else cpu_options_table(args, run)
    auto = describe_settings(fit_auto_settings(device, SEED_OPTIMIZER["optimizer"]))
    body = [
        run.provenance(f"device `{device.type}`; medians of all timed blocks of {args.rounds} round-robin rounds (each "
                       f"a fresh model and seed) of {args.repeats} timed blocks of ~{args.images_per_repeat:,} images "
                       "after untimed warm-up steps; all columns of a table in one process, on the same images, "
                       "measured in turn so that slow drifts of the machine hit all of them alike"),
        "", "Images per second, training only:", "", md_table(rows), "",
        "* **seed loop**: the tutorial's own loop (`fit_tutorial_style`: PIL images through a DataLoader, "
        "`ToTensor`/`Normalize` per image, Adam, `loss.item()` and a device copy every step); "
        "**(waiting for data)** is its share of time spent in the DataLoader.",
        f"* **fit**: `cu.fit`'s training step with its defaults, which chose {auto} here, and the seed's optimizer "
        "(Adam, lr 1e-3), timed by `cu.measure_throughput`; **fit itself**: `cu.fit`'s own epoch timer, same "
        "settings, as a cross-check.",
        "* **fastest fit batch**: the fastest of the seed's batch and the larger ones tried.",
        *[f"* {n}" for n in notes],
    ]
    if target:
        body += ["", target_line(target)]
    if options_rows:
        body += ["", "### cu.fit options on this CPU", "",
                 f"One change at a time from an explicit baseline (float32, NCHW, unfused: `amp=False, "
                 f"channels_last=False, fused=False`) at the course's recipe (`RECOMMENDED_TRAINING`, {base}), plus "
                 "`cu.fit`'s defaults (`\"auto\"`); images/s and the ratio to the baseline, same run:", "",
                 md_table(options_rows)]
    publish(args, "Training speed", "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
