"""Training speed: the seed tutorials' own loop against cu.fit, on each replica's data and batch size.

    COURSE_DATA_DIR=/work/shared/datasets flock /tmp/course-cpu.lock \\
        .venv/bin/python benchmarks/bench_speed.py --readme

For each seed replica, side by side in one process and on the same images:

* **seed loop**: ``cu.fit_tutorial_style``: PIL images through a DataLoader with the seed's
  torchvision transforms, the seed's batch size, Adam, ``loss.item()`` and a device copy every step;
* **fit, same batch**: ``cu.measure_throughput`` with ``cu.fit``'s defaults on this device
  (on a CPU: float32, default memory layout), same model, data, batch and optimizer;
* **fit itself**: ``cu.fit``'s own per-epoch timer (``History['images_per_second']``), same batch,
  as a cross-check of the column before;
* **fit, recommended**: ``channels_last`` plus mixed precision where the hardware has it
  (bf16 on CPUs with native bf16 instructions; on CUDA bf16/fp16 and a fused optimizer), at the
  fastest of a few batch sizes.

Then a table of ``cu.fit`` options on the CPU (memory layout, bf16, fused optimizer, threads,
batch size) for the Paperspace replica and the course's recommended autoencoder.

Every rate is the median of ``--repeats`` timed blocks after untimed warm-up steps. ``--readme``
replaces the "Training speed" section of benchmarks/README.md with the tables.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import course_utils as cu  # noqa: E402

README = ROOT / "benchmarks" / "README.md"

# name: (builder, dataset, seed batch, what we know about the batch)
SEEDS = {
    "GeeksforGeeks": (cu.GeeksforGeeksAutoencoder, "cifar10", 32,
                      "article's batch size not known here: 32 assumed; CIFAR-10 at 32x32 instead of its Flowers102"),
    "Paperspace": (lambda: cu.PaperspaceAutoencoder(latent=200), "cifar10", 64, "latent 200, batch 64 as in the article"),
    "kapilsh": (cu.KapilshAutoencoder, "fashion-mnist", 32, "article's batch size not known here: 32 assumed"),
}
SKIPPED = {"anothertechs": "skipped: 263M parameters (two 131,072 x 1,000 Linear layers), so one Adam step reads and "
                           "writes about 4.2 GB of weights, gradients and moments (16 bytes per parameter); it "
                           "exists to show that design's cost, not to be trained on a 2-core CPU"}


def machine() -> str:
    """Return one line describing this machine and software."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        cpu += f"; GPU {torch.cuda.get_device_name()}"
    return (f"{cpu}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
            f"CPU capability {torch.backends.cpu.get_cpu_capability()}")


def _busy_jiffies() -> int:
    """Return the machine's busy CPU time since boot, in clock ticks (Linux /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return user + nice + system + irq + softirq + steal


def others_share(fn, *args, **kwargs):
    """Run fn; return (its result, the share of all cores that *other* processes used meanwhile, or None)."""
    try:
        tick = os.sysconf("SC_CLK_TCK")
        busy0, own0, t0 = _busy_jiffies(), sum(os.times()[:4]), time.perf_counter()
    except (OSError, ValueError, IndexError):
        return fn(*args, **kwargs), None
    result = fn(*args, **kwargs)
    busy = (_busy_jiffies() - busy0) / tick
    own = sum(os.times()[:4]) - own0
    wall = time.perf_counter() - t0
    return result, max(0.0, busy - own) / (wall * (os.cpu_count() or 1))


def quiet(fn, *args, threshold: float = 0.1, tries: int = 3, wait: float = 20.0, **kwargs):
    """Run a measurement; if other processes took more than ``threshold`` of the CPU, wait and redo it."""
    for attempt in range(tries):
        result, share = others_share(fn, *args, **kwargs)
        if share is None or share <= threshold or attempt == tries - 1:
            QUIET_LOG.append(share)
            return result
        print(f"    (other processes used {share:.0%} of the CPU during this measurement: redoing it)", flush=True)
        time.sleep(wait)


QUIET_LOG: list = []


def interference_note() -> str:
    """Return a sentence on how much CPU other processes took during the kept measurements."""
    shares = [s for s in QUIET_LOG if s is not None]
    if not shares:
        return ""
    return (f"Other processes used {statistics.median(shares):.0%} of the CPU (median; worst "
            f"{max(shares):.0%}) during the kept measurements (each is redone, up to 3 times, when "
            "they take more than 10%).")


def native_bf16() -> bool:
    """Return True when this CPU has bf16 arithmetic (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    cpu = torch.cpu
    return any(getattr(cpu, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


def fit_defaults(device: torch.device) -> dict:
    """Return the settings cu.fit uses by default on ``device`` (amp and channels_last 'auto')."""
    if device.type != "cuda":
        return {"channels_last": False, "amp": False, "fused": False}
    return {"channels_last": True, "amp": "bf16" if torch.cuda.is_bf16_supported() else "fp16", "fused": True}


def recommended(device: torch.device) -> dict:
    """Return the speed settings chapter 05 recommends on ``device``."""
    if device.type == "cuda":
        return fit_defaults(device)
    return {"channels_last": True, "amp": "bf16" if native_bf16() else False, "fused": False}


def fit_itself(build, data, batch_size: int, images: int, repeats: int, device, value_range, **fit_kwargs) -> float:
    """Return the median of cu.fit's own per-epoch images/s over ``repeats`` epochs after a warm-up epoch."""
    torch.manual_seed(0)
    subset = data.subset(max(images, 2 * batch_size))
    history = cu.fit(build(), subset, epochs=1 + repeats, batch_size=batch_size, lr=1e-3, optimizer="adam",
                     schedule=None, device=device, progress=False, value_range=value_range, **fit_kwargs)
    return statistics.median(history["images_per_second"][1:])


def md_table(rows: list[dict]) -> str:
    """Return rows (dicts with the same keys) as a GitHub markdown table."""
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(keys))) + "|"]
    out += ["| " + " | ".join(str(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(out)


def write_readme_section(title: str, body: str, path: Path = README) -> None:
    """Replace (or append) the ``## title`` section of benchmarks/README.md, leaving other sections alone."""
    text = path.read_text() if path.is_file() else "# Benchmarks\n"
    lines = text.splitlines()
    heading = f"## {title}"
    new = [heading, "", body.strip(), ""]
    if heading in lines:
        start = lines.index(heading)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines[start:end] = new
    else:
        lines += ["", *new]
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    os.replace(tmp, path)


def rate(r) -> str:
    return f"{r:,.0f}"


def seed_table(args, device) -> tuple[list[dict], list[str]]:
    rows, notes = [], []
    rec = recommended(device)
    defaults = fit_defaults(device)
    data_cache = {}
    for name, (build, dataset, seed_batch, note) in SEEDS.items():
        if dataset not in data_cache:
            data_cache[dataset] = cu.load_dataset(dataset, "train").subset(args.train_images)
        data = data_cache[dataset]
        value_range = getattr(build(), "value_range", (0.0, 1.0))
        steps = lambda bs: max(3, args.images_per_repeat // bs)  # noqa: E731
        torch.manual_seed(0)
        seed = quiet(cu.fit_tutorial_style, build(), data, seed_batch, epochs=args.repeats,
                                     max_batches=args.images_per_repeat // seed_batch + 3, warmup=3, device=device)
        torch.manual_seed(0)
        same = quiet(cu.measure_throughput, build(), data, seed_batch, steps=steps(seed_batch), repeats=args.repeats,
                                     warmup=3, device=device, **defaults)
        itself = quiet(fit_itself, build, data, seed_batch, args.images_per_repeat, args.repeats, device, value_range,
                            amp=bool(defaults["amp"]), channels_last=defaults["channels_last"])
        best = None
        for bs in dict.fromkeys([seed_batch, 128, 256]):
            torch.manual_seed(0)
            r = quiet(cu.measure_throughput, build(), data, bs, steps=steps(bs), repeats=args.repeats, warmup=3,
                                      device=device, **rec)
            print(f"  {name}: recommended settings at batch {bs}: {r.images_per_second:,.0f} images/s", flush=True)
            if best is None or r.images_per_second > best.images_per_second:
                best = r
        rows.append({"replica": name, "data": dataset, "seed batch": seed_batch,
                     "seed loop": rate(seed.images_per_second),
                     "(waiting for data)": f"{seed.data_fraction:.0%}",
                     "fit, same batch": rate(same.images_per_second),
                     "fit itself": rate(itself),
                     "fit, recommended": f"{rate(best.images_per_second)} (batch {best.batch_size})",
                     "fit / seed": f"{same.images_per_second / seed.images_per_second:.2f}x",
                     "recommended / seed": f"**{best.images_per_second / seed.images_per_second:.2f}x**"})
        notes.append(f"{name}: {note}.")
        print(md_table(rows[-1:]), flush=True)
    for name, why in SKIPPED.items():
        notes.append(f"{name}: {why}.")
    return rows, notes


def cpu_options_table(args, device) -> list[dict]:
    """Measure cu.fit's speed options one at a time against its CPU defaults."""
    data = cu.load_dataset("cifar10", "train").subset(args.train_images)
    models = {"Paperspace": lambda: cu.PaperspaceAutoencoder(latent=200),
              "recommended": lambda: cu.recommended_autoencoder((3, 32, 32), 256)}
    options = [("fit's CPU default: float32, NCHW, batch 128", 128, {}),
               ("batch 64", 64, {}), ("batch 256", 256, {}),
               ("channels_last", 128, {"channels_last": True}),
               ("bf16 autocast", 128, {"amp": "bf16"}),
               ("channels_last + bf16", 128, {"channels_last": True, "amp": "bf16"}),
               ("channels_last + bf16, batch 64", 64, {"channels_last": True, "amp": "bf16"}),
               ("channels_last + bf16, batch 256", 256, {"channels_last": True, "amp": "bf16"}),
               ("fused AdamW", 128, {"fused": True}),
               ("1 thread instead of 2", 128, {"threads": 1})]
    rows = []
    threads = torch.get_num_threads()
    for label, bs, opts in options:
        row = {"setting (one change from the default)": label}
        for name, build in models.items():
            opts = dict(opts)
            n_threads = opts.pop("threads", threads)
            torch.set_num_threads(n_threads)
            try:
                torch.manual_seed(0)
                r = quiet(cu.measure_throughput, build(), data, bs, steps=max(3, args.images_per_repeat // bs),
                                          repeats=args.repeats, warmup=3, device=device, optimizer="adamw", **opts)
            finally:
                torch.set_num_threads(threads)
            row[name] = r.images_per_second
        rows.append(row)
        print(f"  {label}: " + ", ".join(f"{k} {v:,.0f}" for k, v in row.items() if k in models), flush=True)
    base = dict(rows[0])
    for row in rows:
        for name in models:
            v = row[name]
            row[name] = f"{v:,.0f} ({v / base[name]:.2f}x)"
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per measurement (median)")
    parser.add_argument("--images-per-repeat", type=int, default=1536)
    parser.add_argument("--train-images", type=int, default=8192, help="images the batches are drawn from")
    parser.add_argument("--skip-cpu-options", action="store_true")
    parser.add_argument("--readme", action="store_true", help="write the tables into benchmarks/README.md")
    args = parser.parse_args()
    device = cu.get_device()
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    print(f"# Training speed ({started}; {machine()})\n", flush=True)
    rows, notes = seed_table(args, device)
    cpu_rows = [] if args.skip_cpu_options or device.type != "cpu" else cpu_options_table(args, device)
    minutes = (time.perf_counter() - t0) / 60
    load_after = os.getloadavg()[0]
    rec = recommended(device)
    rec_text = ", ".join(f"{k}={v}" for k, v in rec.items() if v) or "none"
    body = [
        f"Measured by `benchmarks/bench_speed.py` on {started}: {machine()}; device `{device.type}`; "
        f"medians of {args.repeats} timed blocks of ~{args.images_per_repeat:,} images after untimed warm-up "
        f"steps; all columns of a row in one process on the same images. 1-minute load average "
        f"{load_before:.1f} before and {load_after:.1f} after the {minutes:.0f}-minute run (2.0 = both cores busy "
        f"with this benchmark alone). {interference_note()}",
        "",
        "Images per second, training only:",
        "",
        md_table(rows),
        "",
        "* **seed loop**: the tutorial's own loop (`cu.fit_tutorial_style`: PIL images through a DataLoader, "
        "`ToTensor`/`Normalize` per image, Adam, `loss.item()` and a device copy every step); "
        "**(waiting for data)** is its share of time spent in the DataLoader.",
        "* **fit, same batch**: `cu.fit`'s training step with its defaults on this device "
        "(`cu.measure_throughput`); **fit itself**: `cu.fit`'s own epoch timer, same batch, as a cross-check.",
        f"* **fit, recommended**: {rec_text}, at the fastest of the seed's batch, 128 and 256.",
        *[f"* {n}" for n in notes],
    ]
    if cpu_rows:
        body += ["", "### cu.fit options on this CPU", "",
                 "One change at a time from `cu.fit`'s CPU defaults (float32, NCHW layout, batch 128, AdamW), "
                 "images/s and the ratio to the default, same run:", "", md_table(cpu_rows)]
    text = "\n".join(body)
    print("\n" + text)
    if args.readme:
        write_readme_section("Training speed", text)
        print(f"\nwrote the 'Training speed' section of {README}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
