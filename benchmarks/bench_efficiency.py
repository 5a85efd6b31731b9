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
from bench_speed import (interference_note, machine, md_table, native_bf16, quiet, round_robin,  # noqa: E402
                         write_readme_section)  # noqa: E402

SHAPE = (3, 32, 32)
TARGET = 0.70


def onednn_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """Return float32 FLOP/s of an n x n x n product run by oneDNN (as a 1x1 convolution), median of repeats.

    torch.matmul on the CPU calls the BLAS library (MKL in the official wheels); the convolutions
    of a training step run in oneDNN. Both rates bound what the step could reach.
    """
    x = torch.randn(1, n, 1, n).contiguous(memory_format=torch.channels_last)  # n "pixels" of n channels
    w = torch.randn(n, n, 1, 1).contiguous(memory_format=torch.channels_last)
    nn.functional.conv2d(x, w)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        nn.functional.conv2d(x, w)
        times.append(time.perf_counter() - t0)
    return 2 * n ** 3 / statistics.median(times)


def o_step(options: dict) -> dict:
    """Translate cu.fit options to cu.measure_throughput's (amp=True means bf16 on the CPU)."""
    return {**options, "amp": "bf16" if options.get("amp") else False}


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


def fit_rate(data, repeats: int, batch_size: int, seed: int = 0, **options) -> float:
    """Return the median of cu.fit's own per-epoch images/s over ``repeats`` epochs after one warm-up epoch."""
    torch.manual_seed(seed)
    settings = {**cu.RECOMMENDED_TRAINING, "batch_size": batch_size}
    history = cu.fit(build(), data, epochs=1 + repeats, device="cpu", progress=False, seed=seed, **settings,
                     **options)
    return statistics.median(history["images_per_second"][1:])


def bare_rate(data, batch_size: int, repeats: int, steps: int, channels_last=False, amp=False, seed=0) -> float:
    """Return images/s of forward + backward alone (no optimizer, no data pipeline): fit's ceiling."""
    torch.manual_seed(seed)
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
    ("optimizer", ("lerp", "addcdiv", "addcmul", "sqrt", "_foreach", "_fused_adam", "Optimizer", "mul_", "div", "add_",
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


def profile_step(data, batch_size: int, steps: int, channels_last=False, amp=False,
                 fused=False) -> tuple[dict, float, list]:
    """Profile fit-equivalent steps; return ms per step by category, total ms per step, top ops."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    model = build()
    batches = cu.DeviceBatches(data, batch_size, "cpu", channels_last=channels_last, drop_last=True)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, **({"fused": True} if fused else {}))

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
    parser.add_argument("--rounds", type=int, default=3, help="round-robin rounds, each with a fresh model")
    parser.add_argument("--repeats", type=int, default=2, help="timed epochs/blocks per run")
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
    onednn32 = quiet(onednn_matmul_flops, 2048, repeats=max(args.repeats, 5))
    print("matmul GFLOP/s: " + ", ".join(f"float32 {n}: {v / 1e9:.0f}" for n, v in mm32.items())
          + f", bf16 2048: {peak16 / 1e9:.0f}", flush=True)

    bf16 = native_bf16()
    big = 4 * bs
    # (label, how: "fit" = cu.fit itself or "step" = fit's step via cu.measure_throughput, batch, options)
    variants = [("cu.fit, CPU defaults (float32, NCHW)", "fit", bs, {}),
                ("cu.fit, channels_last=True", "fit", bs, {"channels_last": True})]
    if bf16:
        variants += [("cu.fit, channels_last=True, amp=True (bf16)", "fit", bs, {"channels_last": True, "amp": True}),
                     ("fit's step + fused AdamW (channels_last, bf16)", "step", bs,
                      {"channels_last": True, "amp": True, "fused": True}),
                     (f"fit's step + fused AdamW (channels_last, bf16), batch {big}", "step", big,
                      {"channels_last": True, "amp": True, "fused": True})]
    jobs = {}
    for label, how, b, options in variants:
        if how == "fit":
            jobs[label] = lambda r, b=b, o=options: fit_rate(data, args.repeats, b, seed=r, **o)
        else:
            step_options = {**o_step(options)}
            jobs[label] = lambda r, b=b, o=step_options: cu.measure_throughput(
                build(), data, b, steps=max(3, 1024 // b), repeats=args.repeats, warmup=3, device="cpu",
                optimizer="adamw", lr=cu.RECOMMENDED_TRAINING["lr"], seed=r, **o).images_per_second
        jobs["alone: " + label] = lambda r, b=b, o=options: bare_rate(
            data, b, args.repeats, steps=max(3, 1024 // b), channels_last=o.get("channels_last", False),
            amp=o.get("amp", False), seed=r)
    runs = round_robin(jobs, args.rounds)
    rates = {k: statistics.median(v) for k, v in runs.items()}
    rows, measured = [], {}
    for label, how, b, options in variants:
        fit_ips, ceiling = rates[label], rates["alone: " + label]
        measured[label] = (fit_ips, ceiling)
        same_peak = peak16 if options.get("amp") else peak32
        rows.append({"run": label, "batch": b, "images/s": f"{fit_ips:,.0f}",
                     "GFLOP/s": f"{fit_ips * per_image / 1e9:.0f}",
                     "% of fp32 matmul": f"**{fit_ips * per_image / peak32:.0%}**",
                     "% of same-precision matmul": f"{fit_ips * per_image / same_peak:.0%}",
                     "% of oneDNN fp32 product": f"{fit_ips * per_image / onednn32:.0%}",
                     "forward+backward alone, images/s": f"{ceiling:,.0f}",
                     "fit / alone": f"{fit_ips / ceiling:.0%}"})
    print(md_table(rows), flush=True)

    profiles = {}
    profile_variants = [("float32, NCHW", False, False, False), ("float32, channels_last", True, False, False)]
    if bf16:
        profile_variants += [("bf16, channels_last", True, True, False),
                             ("bf16, channels_last, fused AdamW", True, True, True)]
    for label, cl, amp, fused in profile_variants:
        profiles[label] = quiet(profile_step, data, bs, steps=12, channels_last=cl, amp=amp, fused=fused)
        print(f"profiled {label}: {profiles[label][1]:.1f} ms per step", flush=True)
    categories = [c for c, _ in CATEGORIES] + ["other"]
    prof_rows = []
    for c in categories:
        row = {"category (self CPU time per step)": c}
        for label, (by_cat, wall, _) in profiles.items():
            ms = by_cat.get(c, 0.0)
            row[label] = f"{ms:.1f} ms ({ms / sum(by_cat.values()):.0%})"
        prof_rows.append(row)
    prof_rows.append({"category (self CPU time per step)": "**wall time per step**",
                      **{label: f"**{wall:.1f} ms**" for label, (_, wall, _) in profiles.items()}})
    top_rows = [{"op (float32, NCHW)": name, "calls per step": calls, "ms per step": f"{ms:.2f}"}
                for ms, name, calls in profiles["float32, NCHW"][2]]

    layers = {"NCHW": quiet(layer_rates, bs, 5), "channels_last": quiet(layer_rates, bs, 5, True)}
    layer_rows = []
    for a, b in zip(layers["NCHW"], layers["channels_last"]):
        layer_rows.append({"layer": a["layer"], "type": a["type"], "input (C x H x W)": a["input"],
                           "GFLOP per batch": f"{a['GFLOP']:.3f}",
                           "NCHW ms": f"{a['ms']:.2f}", "NCHW GFLOP/s": f"{a['GFLOP/s']:.0f}",
                           "channels_last ms": f"{b['ms']:.2f}", "channels_last GFLOP/s": f"{b['GFLOP/s']:.0f}"})
    sum_nchw = sum(r["ms"] for r in layers["NCHW"])
    sum_cl = sum(r["ms"] for r in layers["channels_last"])
    print(md_table(layer_rows), flush=True)

    minutes = (time.perf_counter() - t_start) / 60
    labels = [v[0] for v in variants]
    default_fit, default_alone = measured[labels[0]]
    best_label = max(measured, key=lambda k: measured[k][0])
    best_fit = measured[best_label][0]
    slowest = sorted(layers["NCHW"], key=lambda r: r["GFLOP/s"])[:3]
    fp32 = profiles["float32, NCHW"][0]
    total = sum(fp32.values())
    conv_share = (fp32.get("convolution backward", 0) + fp32.get("convolution forward", 0)) / total
    opt_share = fp32.get("optimizer", 0) / total

    def pct(label):
        return measured[label][0] * per_image / peak32

    def meets(x):
        return "meets" if x >= TARGET else "short of"

    changes = [f"`channels_last=True`: {measured[labels[1]][0] / default_fit:.2f}x"]
    if bf16:
        changes += [f"plus bf16 autocast (`amp=True`): {measured[labels[2]][0] / default_fit:.2f}x",
                    f"plus a fused AdamW: {measured[labels[3]][0] / default_fit:.2f}x"]
    body = [
        f"Measured by `benchmarks/bench_efficiency.py` on {started}: {machine()}; medians over {args.rounds} "
        f"round-robin rounds (fresh model and seed each) of {args.repeats} timed epochs or blocks; 1-minute load "
        f"average {load_before:.1f} before and {os.getloadavg()[0]:.1f} after the {minutes:.0f}-minute run. "
        f"{interference_note()}",
        "",
        f"**Model**: `cu.recommended_autoencoder((3, 32, 32), 256)` as defined when this ran "
        f"({cu.count_parameters(model):,} parameters), trained with `RECOMMENDED_TRAINING` "
        f"(batch {bs}). **Training FLOPs per image**: {per_image / 1e6:.1f} M (forward {forward / 1e6:.1f} M, "
        "backward the rest; `torch.utils.flop_counter` via `cu.flops_per_image`, 2 FLOPs per multiply-add); "
        "by operation: " + ", ".join(f"`{k}` {v / 1e6:.1f} M" for k, v in ops.items()) + ".",
        "",
        "**This machine's matmul rate** (`cu.matmul_flops`, median of repeats): "
        + ", ".join(f"float32 {n}x{n}: {v / 1e9:.0f} GFLOP/s" for n, v in mm32.items())
        + f"; bf16 2048x2048: {peak16 / 1e9:.0f} GFLOP/s. The target, {TARGET:.0%} of the float32 rate, is "
        f"{TARGET * peak32 / 1e9:.0f} GFLOP/s, i.e. {TARGET * peak32 / per_image:,.0f} images/s for this model. "
        f"**Caveat**: `torch.matmul` on the CPU runs the BLAS library of the wheel (MKL here), and on this AMD "
        f"processor oneDNN, the library that runs the convolutions, computes the very same 2048x2048x2048 "
        f"float32 product (as a 1x1 convolution) at {onednn32 / 1e9:.0f} GFLOP/s, "
        f"{onednn32 / mm32[2048]:.1f}x faster. The float32 hardware can therefore do more than the "
        "matmul figure says; the column `% of oneDNN fp32 product` below uses the oneDNN figure instead.",
        "",
        md_table(rows),
        "",
        "`GFLOP/s` is the model's training FLOPs per image times images/s (useful arithmetic, whatever the "
        "precision); `% of same-precision matmul` compares bf16 runs with the bf16 matmul rate. `cu.fit` rows "
        "use `fit`'s own epoch timer; `fit's step + fused AdamW` rows are `fit`'s training step run by "
        "`cu.measure_throughput` with `AdamW(fused=True)`, which `fit` does not use on the CPU today. "
        "`forward+backward alone` is the same model without optimizer, scheduler, data or loss bookkeeping; "
        "`fit / alone` shows how much of the time goes to everything else.",
        "",
        f"**Verdict.** With its CPU defaults `cu.fit` reaches {pct(labels[0]):.0%} of the float32 matmul rate "
        f"({meets(pct(labels[0]))} the {TARGET:.0%} target). The best setting measured, {best_label}, reaches "
        f"{pct(best_label):.0%} ({meets(pct(best_label))} the target), counted in useful FLOPs: bf16 does the "
        f"same arithmetic in half-width numbers, and this CPU's bf16 units run {peak16 / peak32:.1f}x faster "
        "than its float32 ones, so against the bf16 matmul rate that run is far lower (table). Against oneDNN's "
        f"float32 product rate, the stricter reference, the defaults reach "
        f"{measured[labels[0]][0] * per_image / onednn32:.0%} and the best setting "
        f"{best_fit * per_image / onednn32:.0%}. Relative to the defaults: " + "; ".join(changes) + ".",
        "",
        f"**What limits it.** In the float32 default step, convolutions (forward and backward) take "
        f"{conv_share:.0%} of the CPU time and the optimizer's element-wise updates {opt_share:.0%} "
        "(profile below). The convolutions of this model are small: at batch "
        f"{bs} the least efficient layers run far below the matmul rate, "
        + ", ".join(f"`{r['layer']}` ({r['type']}, input {r['input']}, {r['GFLOP/s']:.0f} GFLOP/s)"
                    for r in slowest)
        + ": a 3-channel input or output gives the kernels little to vectorise over, small maps leave "
        "little work per call to amortise each call's fixed cost, and at a small batch the Linear layers "
        "multiply matrices only a batch tall. channels_last lets oneDNN run its NHWC "
        "convolution kernels directly instead of converting activations to and from its own blocked layout; "
        "bf16 halves the bytes moved and uses the CPU's bf16 dot-product instructions; the fused optimizer "
        "replaces several small element-wise kernels per parameter tensor by one pass. Larger batches amortise per-call costs further but change "
        "the training recipe, so they are shown separately.",
        "",
        md_table(prof_rows),
        "",
        f"Each convolution and Linear layer timed alone (forward + backward at its real input shape, batch "
        f"{bs}, median of 5); they sum to {sum_nchw:.1f} ms in NCHW and {sum_cl:.1f} ms in channels_last:",
        "",
        md_table(layer_rows),
        "",
        "Top operations of the float32 NCHW step (self CPU time):",
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
