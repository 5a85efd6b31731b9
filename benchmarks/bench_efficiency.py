"""Compute efficiency: how much of this machine's arithmetic rate cu.fit turns into training.

    COURSE_DATA_DIR=/work/shared/datasets flock /tmp/course-cpu.lock \\
        .venv/bin/python benchmarks/bench_efficiency.py --readme

For the course's recommended CIFAR-10 model (``cu.recommended_autoencoder((3, 32, 32), 256)``):

1. the training FLOPs per image (forward + backward, ``torch.utils.flop_counter`` through
   ``cu.flops_per_image``), split by operation;
2. the machine's measured float32 matmul FLOP/s (``cu.matmul_flops``, 2048 and 4096; bf16 for
   reference);
3. the FLOP/s ``cu.fit`` achieves (its own epoch timer, median of epochs after a warm-up epoch,
   ``RECOMMENDED_TRAINING``) with its CPU defaults and with the speed options, and the same
   step without any of fit's machinery (forward + backward only) as a ceiling;
4. where the time goes: ``torch.profiler`` self-time by category, and every convolution/Linear
   layer timed alone (forward + backward) with its own FLOP/s.

The target is 70 % of the float32 matmul rate. ``--readme`` replaces the "Compute efficiency"
section of benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
import course_utils as cu  # noqa: E402
from bench_speed import interference_note, machine, md_table, native_bf16, quiet, write_readme_section  # noqa: E402

SHAPE = (3, 32, 32)
TARGET = 0.70


def build() -> nn.Module:
    return cu.recommended_autoencoder(SHAPE, 256)


def flop_breakdown(model: nn.Module) -> dict[str, float]:
    """Return training FLOPs per image by aten operation (forward and backward)."""
    counter = FlopCounterMode(display=False)
    x = torch.rand(2, *SHAPE)
    with counter:
        model(x).pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    counts = counter.get_flop_counts().get("Global", {})
    return {str(op).replace("aten.", ""): n / 2 for op, n in counts.items()}


def fit_rate(data, repeats: int, batch_size: int, **options) -> float:
    """Return the median of cu.fit's own per-epoch images/s over ``repeats`` epochs after one warm-up epoch."""
    torch.manual_seed(0)
    settings = {**cu.RECOMMENDED_TRAINING, "batch_size": batch_size}
    history = cu.fit(build(), data, epochs=1 + repeats, device="cpu", progress=False, **settings, **options)
    return statistics.median(history["images_per_second"][1:])


def bare_rate(data, batch_size: int, repeats: int, steps: int, channels_last=False, amp=False) -> float:
    """Return images/s of forward + backward alone (no optimizer, no data pipeline): fit's ceiling."""
    torch.manual_seed(0)
    model = build()
    x = cu.to_float(data.images[:batch_size])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    rates = []
    for r in range(repeats + 1):
        t0 = time.perf_counter()
        for _ in range(steps):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(amp)):
                out = model(x)
            nn.functional.mse_loss(out.float(), x).backward()
        if r:  # the first block is the warm-up
            rates.append(steps * batch_size / (time.perf_counter() - t0))
    return statistics.median(rates)


CATEGORIES = [
    ("convolution backward", ("convolution_backward",)),
    ("convolution forward", ("mkldnn_convolution", "_convolution", "convolution", "conv2d", "conv_transpose",
                             "_slow_conv", "thnn_conv")),
    ("Linear (mm, addmm)", ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear", "aten::matmul")),
    ("activations", ("relu", "threshold_backward", "clamp_min", "gelu", "sigmoid", "silu", "tanh")),
    ("optimizer", ("lerp", "addcdiv", "addcmul", "sqrt", "_foreach", "Optimizer", "mul_", "div", "add_",
                   "maximum", "pow", "reciprocal", "zero_", "fill_")),
    ("copies and layout changes", ("copy_", "contiguous", "clone", "_to_copy", "aten::to", "reorder",
                                   "as_strided", "empty_like")),
    ("data (gather, scale)", ("index", "randperm")),
    ("loss", ("mse_loss",)),
]


def categorize(name: str) -> str:
    for category, keys in CATEGORIES:
        if any(k in name for k in keys):
            return category
    return "other"


def profile_step(data, batch_size: int, steps: int, channels_last=False, amp=False) -> tuple[dict, float, list]:
    """Profile fit-equivalent steps; return ms per step by category, total ms per step, top ops."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = build()
    batches = cu.DeviceBatches(data, batch_size, "cpu", channels_last=channels_last, drop_last=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def endless():
        epoch = 0
        while True:
            yield from batches.batches(epoch)
            epoch += 1

    source = endless()

    def step():
        x = next(source)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(amp)):
            out = model(x)
        loss = nn.functional.mse_loss(out.float(), x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - t0) / steps * 1000
    by_cat: dict[str, float] = {}
    ops = []
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / 1000 / steps
        by_cat[categorize(e.key)] = by_cat.get(categorize(e.key), 0.0) + ms
        ops.append((ms, e.key, e.count // steps))
    ops.sort(reverse=True)
    return by_cat, wall, ops[:10]


def layer_rates(batch_size: int, repeats: int, channels_last=False, amp=False) -> list[dict]:
    """Time each Conv/ConvTranspose/Linear layer alone (forward + backward) at its real input shape."""
    model = build()
    shapes, order = {}, []

    def record(name):
        def hook(module, inputs, output):  # returns None: the output is left alone
            shapes[name] = tuple(inputs[0].shape)
            order.append(name)
        return hook

    hooks = [m.register_forward_hook(record(name)) for name, m in model.named_modules()
             if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    with torch.no_grad():
        model(torch.rand(batch_size, *SHAPE))
    for h in hooks:
        h.remove()
    modules = dict(model.named_modules())
    rows = []
    for i, name in enumerate(order):
        layer = copy.deepcopy(modules[name])
        x = torch.rand(shapes[name])
        if channels_last and x.ndim == 4:
            layer = layer.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_(i > 0)  # the first layer's input is the data: no input gradient, as in training
        counter = FlopCounterMode(display=False)
        with counter:
            layer(x).sum().backward()
        flops = counter.get_total_flops()
        times = []
        for r in range(repeats + 2):
            layer.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bool(amp)):
                out = layer(x)
            out.backward(torch.ones_like(out))
            if r >= 2:
                times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        kind = type(layer).__name__.replace("Transpose", "T.")
        rows.append({"layer": name, "type": kind, "input": "x".join(map(str, shapes[name][1:])),
                     "ms": t * 1000, "GFLOP": flops / 1e9, "GFLOP/s": flops / t / 1e9})
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train-images", type=int, default=2048, help="images per fit epoch")
    parser.add_argument("--readme", action="store_true")
    args = parser.parse_args()
    started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    load_before = os.getloadavg()[0]
    t_start = time.perf_counter()
    print(f"# Compute efficiency ({started}; {machine()})\n", flush=True)
    bs = cu.RECOMMENDED_TRAINING["batch_size"]
    data = cu.load_dataset("cifar10", "train").subset(args.train_images)

    model = build()
    per_image = cu.flops_per_image(model, SHAPE)
    forward = cu.flops_per_image(model, SHAPE, backward=False)
    ops = flop_breakdown(model)
    print(f"training FLOPs per image {per_image / 1e6:.1f} M (forward {forward / 1e6:.1f} M); by op: "
          + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in ops.items()), flush=True)

    mm32 = quiet(cu.matmul_flops, (2048, 4096), repeats=args.repeats, device="cpu")
    mm16 = quiet(cu.matmul_flops, 2048, repeats=args.repeats, device="cpu", dtype=torch.bfloat16)
    peak32, peak16 = max(mm32.values()), mm16[2048]
    print("matmul GFLOP/s: " + ", ".join(f"float32 {n}: {v / 1e9:.0f}" for n, v in mm32.items())
          + f", bf16 2048: {peak16 / 1e9:.0f}", flush=True)

    bf16 = native_bf16()
    variants = [("cu.fit, CPU defaults (float32, NCHW)", {}, False, False),
                ("cu.fit, channels_last=True", {"channels_last": True}, True, False)]
    if bf16:
        variants.append(("cu.fit, channels_last=True, amp=True (bf16)", {"channels_last": True, "amp": True},
                         True, True))
    rows, measured = [], {}
    for label, options, cl, amp in variants:
        fit_ips = quiet(fit_rate, data, args.repeats, bs, **options)
        ceiling = quiet(bare_rate, data, bs, args.repeats, steps=max(3, 1024 // bs), channels_last=cl, amp=amp)
        measured[label] = (fit_ips, ceiling)
        same_peak = peak16 if amp else peak32
        rows.append({"run (batch 128, RECOMMENDED_TRAINING)": label, "images/s": f"{fit_ips:,.0f}",
                     "GFLOP/s": f"{fit_ips * per_image / 1e9:.0f}",
                     "% of fp32 matmul": f"**{fit_ips * per_image / peak32:.0%}**",
                     "% of same-precision matmul": f"{fit_ips * per_image / same_peak:.0%}",
                     "forward+backward alone, images/s": f"{ceiling:,.0f}",
                     "fit / alone": f"{fit_ips / ceiling:.0%}"})
        print(md_table(rows[-1:]), flush=True)

    profiles = {}
    for label, cl, amp in [("float32, NCHW", False, False), ("float32, channels_last", True, False)] + \
            ([("bf16, channels_last", True, True)] if bf16 else []):
        profiles[label] = quiet(profile_step, data, bs, steps=6, channels_last=cl, amp=amp)
        print(f"profiled {label}: {profiles[label][1]:.1f} ms per step", flush=True)
    categories = [c for c, _ in CATEGORIES] + ["other"]
    prof_rows = []
    for c in categories:
        row = {"category (self CPU time)": c}
        for label, (by_cat, wall, _) in profiles.items():
            ms = by_cat.get(c, 0.0)
            total = sum(by_cat.values())
            row[label] = f"{ms:.1f} ms ({ms / total:.0%})"
        prof_rows.append(row)
    prof_rows.append({"category (self CPU time)": "**wall time per step**",
                      **{label: f"**{wall:.1f} ms**" for label, (_, wall, _) in profiles.items()}})
    top_rows = [{"op (float32, NCHW)": name, "calls per step": calls, "ms per step": f"{ms:.1f}"}
                for ms, name, calls in profiles["float32, NCHW"][2]]

    layers = {"NCHW": quiet(layer_rates, bs, args.repeats), "channels_last": quiet(layer_rates, bs, args.repeats, True)}
    layer_rows = []
    for a, b in zip(layers["NCHW"], layers["channels_last"]):
        layer_rows.append({"layer": a["layer"], "type": a["type"], "input (C x H x W)": a["input"],
                           "GFLOP per batch": f"{a['GFLOP']:.2f}",
                           "NCHW ms": f"{a['ms']:.1f}", "NCHW GFLOP/s": f"{a['GFLOP/s']:.0f}",
                           "channels_last ms": f"{b['ms']:.1f}", "channels_last GFLOP/s": f"{b['GFLOP/s']:.0f}"})
    sum_nchw = sum(r["ms"] for r in layers["NCHW"])
    sum_cl = sum(r["ms"] for r in layers["channels_last"])
    print(md_table(layer_rows), flush=True)

    minutes = (time.perf_counter() - t_start) / 60
    default_fit, default_alone = measured[variants[0][0]]
    best_label = max(measured, key=lambda k: measured[k][0])
    best_fit = measured[best_label][0]
    slowest = sorted(layers["NCHW"], key=lambda r: r["GFLOP/s"])[:3]
    conv_bwd = profiles["float32, NCHW"][0].get("convolution backward", 0.0)
    total_nchw = sum(profiles["float32, NCHW"][0].values())
    body = [
        f"Measured by `benchmarks/bench_efficiency.py` on {started}: {machine()}; medians of {args.repeats} "
        f"repeats; 1-minute load average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the "
        f"{minutes:.0f}-minute run. {interference_note()}",
        "",
        f"**Model**: `cu.recommended_autoencoder((3, 32, 32), 256)`, {cu.count_parameters(model):,} parameters. "
        f"**Training FLOPs per image**: {per_image / 1e6:.1f} M (forward {forward / 1e6:.1f} M, backward the rest; "
        "`torch.utils.flop_counter` via `cu.flops_per_image`, counting 2 FLOPs per multiply-add); by operation: "
        + ", ".join(f"`{k}` {v / 1e6:.1f} M" for k, v in ops.items()) + ".",
        "",
        "**This machine's matmul rate** (`cu.matmul_flops`, median of repeats): "
        + ", ".join(f"float32 {n}x{n}: {v / 1e9:.0f} GFLOP/s" for n, v in mm32.items())
        + f"; bf16 2048x2048: {peak16 / 1e9:.0f} GFLOP/s. The target is {TARGET:.0%} of the float32 rate "
        f"({TARGET * peak32 / 1e9:.0f} GFLOP/s, i.e. {TARGET * peak32 / per_image:,.0f} images/s for this model).",
        "",
        md_table(rows),
        "",
        "`% of fp32 matmul` counts the model's FLOPs per image times images/s against the float32 matmul "
        "rate; for the bf16 run, the same useful FLOPs are also compared with the bf16 matmul rate. "
        "`forward+backward alone` is the same step without an optimizer, scheduler, data pipeline or loss "
        "bookkeeping: the most `fit` could reach with these kernels, so `fit / alone` is fit's own overhead.",
        "",
        f"**Verdict.** With its CPU defaults `cu.fit` reaches {default_fit * per_image / peak32:.0%} of the float32 "
        f"matmul rate, short of the {TARGET:.0%} target; {best_label} reaches "
        f"{best_fit * per_image / peak32:.0%}. fit's own machinery costs {1 - default_fit / default_alone:.0%} "
        "of the time (fit / alone above), so the gap is in the convolution kernels, not in the loop:",
        "",
        md_table(prof_rows),
        "",
        f"Convolution backward alone is {conv_bwd / total_nchw:.0%} of the float32 step. Timed one by one "
        f"(forward + backward, batch {bs}), the layers sum to {sum_nchw:.0f} ms in NCHW and {sum_cl:.0f} ms in "
        f"channels_last; the least efficient are "
        + ", ".join(f"`{r['layer']}` ({r['type']}, input {r['input']}, {r['GFLOP/s']:.0f} GFLOP/s)"
                    for r in slowest) + ":",
        "",
        md_table(layer_rows),
        "",
        "Top operations of the float32 NCHW step:",
        "",
        md_table(top_rows),
    ]
    text = "\n".join(body)
    print("\n" + text)
    if args.readme:
        write_readme_section("Compute efficiency", text)
        print("\nwrote the 'Compute efficiency' section of benchmarks/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
