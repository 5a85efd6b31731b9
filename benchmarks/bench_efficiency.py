"""Compute efficiency: how much of this machine's arithmetic rate cu.fit turns into training.

    COURSE_DATA_DIR=/work/shared/datasets flock /tmp/course-cpu.lock \\
        .venv/bin/python benchmarks/bench_efficiency.py --readme

    # a seconds-long check of the script itself (tests/test_benchmarks.py runs it)
    BENCH_MAX_OTHERS=1 COURSE_DATA_DIR=/work/shared/datasets \\
        .venv/bin/python benchmarks/bench_efficiency.py --tiny --readme-path /tmp/README.md

For the course's recommended CIFAR-10 model (``cu.recommended_autoencoder((3, 32, 32), 256)``),
trained on the CPU with ``cu.RECOMMENDED_TRAINING``:

1. the training FLOPs per image (forward + backward): the total from ``cu.flops_per_image``,
   the split by operation from ``torch.utils.flop_counter``;
2. the machine's measured float32 matmul FLOP/s (``cu.matmul_flops``; bf16 and oneDNN's
   float32 product for reference);
3. the FLOP/s ``cu.fit`` achieves (its own epoch timer, epochs after a warm-up epoch) from an
   explicit float32, NCHW, unfused baseline up to its defaults ("auto"), and beside each the
   same model's forward + backward alone (no optimizer step: a ceiling, not a training step);
4. where the time goes: ``torch.profiler`` self-time by category over fit's step (run by
   ``course_utils.timing.TimedSteps``), and every convolution/Linear layer timed alone
   (forward + backward) with its own FLOP/s.

The target: ``cu.fit`` with its defaults at batch 32 reaches 70% of the float32 matmul rate.
``--readme`` replaces the "Compute efficiency" section of benchmarks/README.md (``--readme-path``
writes another file).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import course_utils as cu
from course_utils.timing import TimedSteps
from _common import (BenchRun, add_run_arguments, apply_tiny, blas_name, cpu_vendor, describe_settings,
                     fit_auto_settings, fit_throughput, machine_line, md_table, publish, round_robin, verdict)

SHAPE, LATENT = (3, 32, 32), 256
TARGET = 0.70  # of the float32 matmul rate, with fit's defaults at the recipe's batch
RECIPE = {k: v for k, v in cu.RECOMMENDED_TRAINING.items() if k != "batch_size"}
BASELINE = {"amp": False, "channels_last": False, "fused": False}
TINY = {"rounds": 1, "repeats": 1, "train_images": 256, "matmul_sizes": [256], "block_images": 64,
        "profile_steps": 2, "layer_repeats": 1}


def build() -> nn.Module:
    """Return a fresh recommended CIFAR-10 autoencoder, the model every measurement here trains."""
    return cu.recommended_autoencoder(SHAPE, LATENT)


# --------------------------------------------------------------------------- references
def onednn_matmul_flops(n: int = 2048, repeats: int = 5) -> float:
    """Return float32 FLOP/s of an n x n x n product run by oneDNN (as a 1x1 convolution), median of repeats.

    torch.matmul on the CPU calls the BLAS library of the torch build; the convolutions of a
    training step run in oneDNN. Both rates bound what the step could reach.
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


def flops_by_op(model: nn.Module) -> dict[str, float]:
    """Return training FLOPs per image by aten operation (the package counts only the total)."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(torch.rand(2, *SHAPE)).pow(2).mean().backward()
    model.zero_grad(set_to_none=True)
    counts = counter.get_flop_counts().get("Global", {})
    return {str(op).replace("aten.", ""): n / 2 for op, n in counts.items()}


# --------------------------------------------------------------------------- rates
class ForwardBackward:
    """Forward + backward of a TrainStep's model with no optimizer step: a ceiling measurement, not training."""

    def __init__(self, step: cu.TrainStep):
        self.step = step

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        step = self.step
        step.model.zero_grad(set_to_none=True)  # as the real step does, so gradients are written, not summed
        with torch.autocast(step.device.type, dtype=step.amp_dtype, enabled=step.amp_dtype is not None):
            out = step.forward(x)
        loss = step.loss_fn(out.float(), x)
        loss.backward()
        return loss.detach()


def forward_backward_rate(data, batch_size: int, steps: int, repeats: int, seed: int = 0, **options) -> cu.Throughput:
    """Time forward + backward alone with the step's own model setup, batches and timer (TimedSteps)."""
    torch.manual_seed(seed)
    runner = TimedSteps(build(), data, batch_size, device="cpu", seed=seed, **RECIPE, **options)
    runner.step = ForwardBackward(runner.step)  # same batches, placement, autocast and clock; no optimizer
    return runner.measure(steps, repeats, warmup=2)


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
    """Return the CATEGORIES entry a profiler op name belongs to ('other' when none)."""
    return next((category for category, keys in CATEGORIES if any(k in name for k in keys)), "other")


def profile_step(data, batch_size: int, steps: int, **options) -> tuple[dict, float, list]:
    """Profile fit's training step (TimedSteps); return ms per step by category, wall ms per step, top ops."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    warmup = 3
    runner = TimedSteps(build(), data, batch_size, device="cpu", total_steps=warmup + steps,
                           **{**RECIPE, **options})
    runner.run(warmup)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        wall = runner.run(steps) / steps * 1000
    by_category: dict[str, float] = {}
    ops = []
    for e in prof.key_averages():
        ms = e.self_cpu_time_total / 1000 / steps
        by_category[categorize(e.key)] = by_category.get(categorize(e.key), 0.0) + ms
        ops.append((ms, e.key, e.count // steps))
    return by_category, wall, sorted(ops, reverse=True)[:10]


def layer_rates(batch_size: int, repeats: int, channels_last: bool = False) -> list[dict]:
    """Time each Conv/ConvTranspose/Linear layer alone (forward + backward, float32) at its real input shape."""
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
        for r in range(repeats + 2):  # the first two are warm-up
            layer.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            out = layer(x)
            out.backward(torch.ones_like(out))
            if r >= 2:
                times.append(time.perf_counter() - t0)
        t = statistics.median(times)
        rows.append({"layer": name, "type": type(layer).__name__.replace("Transpose", "T."),
                     "input": "x".join(map(str, shapes[name][1:])), "ms": t * 1000, "GFLOP": flops / 1e9,
                     "GFLOP/s": flops / t / 1e9})
    return rows


# --------------------------------------------------------------------------- the measurements
def fit_variants(batch_size: int, auto: str) -> tuple[list[tuple[str, int, dict]], str]:
    """Return (label, batch, fit options) from the float32 baseline up to fit's defaults, and the target's label."""
    variants = [("cu.fit, float32, NCHW, unfused (amp=False, channels_last=False, fused=False)", batch_size, BASELINE),
                ("cu.fit, channels_last=True (amp=False, fused=False)", batch_size,
                 {**BASELINE, "channels_last": True})]
    if cu.cpu_has_native_bf16():  # bf16 emulated in software would only measure the emulation
        variants.append(('cu.fit, channels_last=True, amp="bf16" (fused=False)', batch_size,
                         {"channels_last": True, "amp": "bf16", "fused": False}))
    target = f"**cu.fit, its defaults** (auto: {auto})"
    variants += [(target, batch_size, {}), (f"cu.fit, its defaults, batch {4 * batch_size}", 4 * batch_size, {})]
    return variants, target


def efficiency_table(args, data, run: BenchRun, per_image: float, peaks: dict) -> tuple[list[dict], dict, str]:
    """Measure every variant with cu.fit and its forward + backward ceiling, round-robin; return rows, rates, target."""
    bs = cu.RECOMMENDED_TRAINING["batch_size"]
    auto = fit_auto_settings("cpu", RECIPE["optimizer"])
    variants, target = fit_variants(bs, describe_settings(auto))
    jobs = {}
    for label, b, options in variants:
        jobs[label] = lambda r, b=b, o=options: fit_throughput(build(), data, b, args.repeats, device="cpu", seed=r,
                                                               **RECIPE, **o)
        jobs["alone: " + label] = lambda r, b=b, o=options: forward_backward_rate(
            data, b, max(3, args.block_images // b), args.repeats, seed=r, **o)
    rates = {k: t.images_per_second for k, t in round_robin(jobs, args.rounds, run.interference).items()}
    baseline = rates[variants[0][0]]
    rows = []
    for label, b, options in variants:
        fit, alone = rates[label], rates["alone: " + label]
        bf16 = options.get("amp", auto["amp"]) in ("bf16", "bfloat16")
        rows.append({"run": label, "batch": b, "images/s": f"{fit:,.0f}", "x baseline": f"{fit / baseline:.2f}x",
                     "GFLOP/s": f"{fit * per_image / 1e9:.0f}",
                     "% of fp32 matmul": f"**{fit * per_image / peaks['float32']:.0%}**",
                     "% of same-precision matmul": f"{fit * per_image / peaks['bf16' if bf16 else 'float32']:.0%}",
                     "% of oneDNN fp32 product": f"{fit * per_image / peaks['oneDNN']:.0%}",
                     "forward+backward alone, images/s": f"{alone:,.0f}", "fit / alone": f"{fit / alone:.0%}"})
    return rows, {label: rates[label] for label, _, _ in variants}, target


def profile_tables(args, data, run: BenchRun, auto: str) -> tuple[list[dict], list[dict], dict]:
    """Profile fit's step in each setting; return the by-category rows, the baseline's top ops, its categories."""
    bs = cu.RECOMMENDED_TRAINING["batch_size"]
    settings = {"float32, NCHW, unfused": BASELINE, "float32, channels_last": {**BASELINE, "channels_last": True}}
    if cu.cpu_has_native_bf16():
        settings["bf16, channels_last"] = {"channels_last": True, "amp": "bf16", "fused": False}
    settings[f"fit's defaults ({auto})"] = {}
    profiles = {}
    for label, options in settings.items():
        profiles[label] = run.quiet(profile_step, data, bs, args.profile_steps, **options)
        print(f"profiled {label}: {profiles[label][1]:.1f} ms per step", flush=True)
    header = "category (self CPU time per step)"
    rows = []
    for category in [c for c, _ in CATEGORIES] + ["other"]:
        row = {header: category}
        for label, (by_category, _, _) in profiles.items():
            ms = by_category.get(category, 0.0)
            row[label] = f"{ms:.1f} ms ({ms / sum(by_category.values()):.0%})"
        rows.append(row)
    rows.append({header: "**wall time per step**", **{k: f"**{wall:.1f} ms**" for k, (_, wall, _) in profiles.items()}})
    baseline = profiles["float32, NCHW, unfused"]
    top = [{"op (float32, NCHW, unfused)": name, "calls per step": calls, "ms per step": f"{ms:.2f}"}
           for ms, name, calls in baseline[2]]
    return rows, top, baseline[0]


def layer_table(args) -> tuple[list[dict], dict]:
    """Time every layer alone in NCHW and channels_last; return rows and the NCHW measurements' sums."""
    bs = cu.RECOMMENDED_TRAINING["batch_size"]
    nchw, cl = layer_rates(bs, args.layer_repeats), layer_rates(bs, args.layer_repeats, channels_last=True)
    rows = [{"layer": a["layer"], "type": a["type"], "input (C x H x W)": a["input"],
             "GFLOP per batch": f"{a['GFLOP']:.3f}", "NCHW ms": f"{a['ms']:.2f}",
             "NCHW GFLOP/s": f"{a['GFLOP/s']:.0f}", "channels_last ms": f"{b['ms']:.2f}",
             "channels_last GFLOP/s": f"{b['GFLOP/s']:.0f}"} for a, b in zip(nchw, cl)]
    return rows, {"NCHW": nchw, "channels_last": cl}


# --------------------------------------------------------------------------- the README section
def reference_paragraph(mm32: dict, peaks: dict, per_image: float) -> str:
    """Return the paragraph on the matmul rates, with the BLAS/oneDNN comparison worded from the numbers."""
    onednn_vs_blas = peaks["oneDNN"] / mm32[min(mm32)]
    where = f"on this {cpu_vendor()} processor" if cpu_vendor() else "on this processor"
    comparison = ("faster: the float32 hardware can do more than the matmul figure says"
                  if onednn_vs_blas > 1.1 else "slower" if onednn_vs_blas < 0.9 else "about as fast")
    return ("**This machine's matmul rate** (`cu.matmul_flops`, median of repeats): "
            + ", ".join(f"float32 {n}x{n}: {v / 1e9:.0f} GFLOP/s" for n, v in mm32.items())
            + f"; bf16 {min(mm32)}x{min(mm32)}: {peaks['bf16'] / 1e9:.0f} GFLOP/s "
            f"({peaks['bf16'] / peaks['float32']:.1f}x the float32 rate). The target, {TARGET:.0%} of the float32 "
            f"rate, is {TARGET * peaks['float32'] / 1e9:.0f} GFLOP/s, i.e. "
            f"{TARGET * peaks['float32'] / per_image:,.0f} images/s for this model. **Caveat**: "
            f"`torch.matmul` on the CPU runs the BLAS library of this torch build ({blas_name()}); {where} oneDNN, the "
            f"library that runs the convolutions, computes the same {min(mm32)}-sized float32 product (as a 1x1 "
            f"convolution) at {peaks['oneDNN'] / 1e9:.0f} GFLOP/s, {onednn_vs_blas:.1f}x the BLAS rate, {comparison}. "
            "The column `% of oneDNN fp32 product` uses that figure instead.")


def target_paragraph(rates: dict, target_label: str, per_image: float, peaks: dict, bs: int) -> str:
    """Return the target's verdict for fit's defaults, computed from the measured rates, and what bf16 means for it."""
    auto = fit_auto_settings("cpu", RECIPE["optimizer"])
    flops = {label: ips * per_image for label, ips in rates.items()}
    achieved = flops[target_label] / peaks["float32"]
    text = (f"**Target** (`cu.fit` with its defaults, {describe_settings(auto)} here, on this model at batch {bs}: at "
            f"least {TARGET:.0%} of the float32 matmul rate): **{verdict(achieved, TARGET)}** in this run, "
            f"{achieved:.0%} ({flops[target_label] / 1e9:.0f} of {peaks['float32'] / 1e9:.0f} GFLOP/s); against "
            f"oneDNN's float32 product rate {flops[target_label] / peaks['oneDNN']:.0%}. The float32, NCHW, unfused "
            f"baseline reaches {flops[next(iter(flops))] / peaks['float32']:.0%}.")
    if auto["amp"] == "bfloat16":
        text += (f" The defaults compute in bf16 autocast, and this CPU's bf16 matmul runs at "
                 f"{peaks['bf16'] / peaks['float32']:.1f}x its float32 rate: against the bf16 rate the same run "
                 f"reaches {flops[target_label] / peaks['bf16']:.0%} (FLOPs counted as useful arithmetic either way).")
    return text


def limits_paragraph(categories: dict, layers: dict, peaks: dict, bs: int) -> str:
    """Return the paragraph on where the baseline step's time goes, from the profile and the layer timings."""
    total = sum(categories.values())
    conv = (categories.get("convolution backward", 0) + categories.get("convolution forward", 0)) / total
    slowest = sorted(layers["NCHW"], key=lambda r: r["GFLOP/s"])[:3]
    return (f"**What limits it.** In the float32, NCHW, unfused step, convolutions (forward and backward) take "
            f"{conv:.0%} of the CPU time, Linear layers {categories.get('Linear (mm, addmm)', 0) / total:.0%} and the "
            f"optimizer's element-wise updates {categories.get('optimizer', 0) / total:.0%} (profile below). Timed "
            f"alone at batch {bs}, the least efficient layers reach "
            + ", ".join(f"`{r['layer']}` ({r['type']}, input {r['input']}): {r['GFLOP/s']:.0f} GFLOP/s, "
                        f"{r['GFLOP/s'] * 1e9 / peaks['float32']:.0%} of the float32 matmul rate" for r in slowest)
            + ". Likely reasons: a 3-channel input or output gives the kernels little to vectorise over, small maps "
            "leave little work per call to amortise its fixed cost, and at a small batch the Linear layers multiply "
            "matrices only a batch tall. channels_last lets oneDNN run its NHWC convolution kernels without "
            "converting activations to its blocked layout, bf16 halves the bytes moved, and a fused optimizer "
            "replaces several element-wise kernels per parameter tensor by one pass; the tables show how much each "
            "gives here.")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, rounds=3, repeats=2)
    parser.add_argument("--train-images", type=int, default=2048, help="images per fit epoch")
    parser.add_argument("--block-images", type=int, default=1024, help="images per timed block of forward+backward")
    parser.add_argument("--matmul-sizes", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--profile-steps", type=int, default=12)
    parser.add_argument("--layer-repeats", type=int, default=5)
    args = apply_tiny(parser.parse_args(), TINY)
    run = BenchRun("bench_efficiency.py")
    print(f"# Compute efficiency ({run.started}; {machine_line()})\n", flush=True)
    bs = cu.RECOMMENDED_TRAINING["batch_size"]
    data = cu.load_dataset("cifar10", "train").subset(args.train_images)
    auto = describe_settings(fit_auto_settings("cpu", RECIPE["optimizer"]))

    model = build()
    per_image, forward = cu.flops_per_image(model, SHAPE), cu.flops_per_image(model, SHAPE, backward=False)
    by_op = flops_by_op(model)
    mm32 = run.quiet(cu.matmul_flops, args.matmul_sizes, repeats=max(args.repeats, 2), device="cpu")
    n = min(mm32)
    peaks = {"float32": max(mm32.values()), "oneDNN": run.quiet(onednn_matmul_flops, n, repeats=max(args.repeats, 5)),
             "bf16": run.quiet(cu.matmul_flops, n, repeats=max(args.repeats, 2), device="cpu", dtype=torch.bfloat16)[n]}
    print(f"training FLOPs per image {per_image / 1e6:.1f} M; matmul GFLOP/s "
          + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items()), flush=True)

    rows, rates, default_label = efficiency_table(args, data, run, per_image, peaks)
    print(md_table(rows), flush=True)
    prof_rows, top_rows, categories = profile_tables(args, data, run, auto)
    layer_rows, layers = layer_table(args)
    sums = {k: sum(r["ms"] for r in v) for k, v in layers.items()}
    body = [
        run.provenance(f"medians of all timed epochs or blocks of {args.rounds} round-robin rounds (fresh model and "
                       f"seed each) of {args.repeats} each"),
        "",
        f"**Model**: `cu.recommended_autoencoder((3, 32, 32), {LATENT})` as defined when this ran "
        f"({cu.count_parameters(model):,} parameters), trained with `RECOMMENDED_TRAINING` (batch {bs}) on "
        f"{len(data):,} CIFAR-10 images per epoch. **Training FLOPs per image**: {per_image / 1e6:.1f} M (forward "
        f"{forward / 1e6:.1f} M, backward the rest; `cu.flops_per_image`, 2 FLOPs per multiply-add); by operation: "
        + ", ".join(f"`{k}` {v / 1e6:.1f} M" for k, v in by_op.items()) + ".",
        "", reference_paragraph(mm32, peaks, per_image), "", md_table(rows), "",
        "`GFLOP/s` is the model's training FLOPs per image times images/s (useful arithmetic, whatever the "
        "precision); `% of same-precision matmul` compares bf16 runs with the bf16 matmul rate. Every row is "
        "`cu.fit` itself (its own epoch timer); `forward+backward alone` is the same model, batches and settings "
        "without the optimizer step, scheduler or loss bookkeeping (`course_utils.timing.TimedSteps` with the "
        "step's forward and backward only): a ceiling, not a training step. `fit / alone` shows how much of the "
        "time goes to everything else.",
        "",
        target_paragraph(rates, default_label, per_image, peaks, bs),
        "", limits_paragraph(categories, layers, peaks, bs), "", md_table(prof_rows), "",
        f"Each convolution and Linear layer timed alone (float32, forward + backward at its real input shape, batch "
        f"{bs}, median of {args.layer_repeats}); they sum to {sums['NCHW']:.1f} ms in NCHW and "
        f"{sums['channels_last']:.1f} ms in channels_last:",
        "", md_table(layer_rows), "", "Top operations of the float32, NCHW, unfused step (self CPU time):", "",
        md_table(top_rows),
    ]
    publish(args, "Compute efficiency", "\n".join(body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
