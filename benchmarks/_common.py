"""What the benchmark scripts share: the machine line, the interference check, turns, tables, README sections.

The scripts run as ``python benchmarks/<script>.py``, so this folder is on ``sys.path`` and
``import _common`` works; everything that trains comes from ``course_utils`` (``cu``).
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import shlex
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import torch

import course_utils as cu

HERE = Path(__file__).resolve().parent
README = HERE / "README.md"
DEFAULT_MAX_OTHERS = 0.1  # share of the CPU other processes may take before a measurement is redone

# BLAS_INFO values of torch.__config__.show() and the libraries they name
BLAS_NAMES = {"mkl": "MKL", "open": "OpenBLAS", "openblas": "OpenBLAS", "accelerate": "Apple Accelerate",
              "blis": "BLIS", "flexi": "FlexiBLAS", "atlas": "ATLAS", "eigen": "Eigen"}
CPU_VENDORS = ("AMD", "Intel", "Apple", "Ampere", "Qualcomm", "ARM")


# --------------------------------------------------------------------------- the machine
def blas_name() -> str:
    """Return the BLAS library this torch build runs ``torch.matmul`` on the CPU with (from its build config)."""
    found = re.search(r"BLAS_INFO=([\w-]+)", torch.__config__.show())
    if found is None:
        return "unknown BLAS"
    return BLAS_NAMES.get(found.group(1).lower(), found.group(1))


def cpu_vendor() -> str | None:
    """Return the processor's vendor as named in ``cu.cpu_name()``, or None when it does not say."""
    name = cu.cpu_name()
    return next((v for v in CPU_VENDORS if re.search(rf"\b{v}\b", name, re.I)), None)


def machine_line(stamp: bool = False) -> str:
    """Return one line naming this machine and its software; ``stamp`` adds the time and the load average."""
    parts = [cu.cpu_name(), f"{os.cpu_count()} cores", f"{torch.get_num_threads()} torch threads",
             f"CPU capability {torch.backends.cpu.get_cpu_capability()}",
             f"native bf16 {'yes' if cu.cpu_has_native_bf16() else 'no'}", f"BLAS {blas_name()}",
             f"torch {torch.__version__}", f"Python {platform.python_version()}"]
    if torch.cuda.is_available():
        parts.append(f"GPU {torch.cuda.get_device_name()}")
    if stamp:
        parts.append(f"{dt.datetime.now():%Y-%m-%d %H:%M}, 1-minute load average {load_average():.1f} at start")
    return ", ".join(parts)


def load_average() -> float:
    """Return the 1-minute load average (NaN where the system has none)."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")


def fit_auto_settings(device: torch.device | str, optimizer: str = "adamw") -> dict:
    """Return what cu.fit's "auto" options (amp, channels_last, fused) choose on ``device``, as TrainStep says."""
    chosen = cu.TrainStep(torch.nn.Linear(1, 1), device=device, optimizer=optimizer).settings
    return {k: chosen[k] for k in ("amp", "channels_last", "fused")}


def describe_settings(settings: Mapping) -> str:
    """Return TrainStep settings (amp, channels_last, fused) in words, e.g. 'bfloat16 autocast, channels_last'."""
    words = [f"{settings['amp']} autocast" if settings.get("amp") else "float32",
             "channels_last" if settings.get("channels_last") else "NCHW",
             "fused optimizer" if settings.get("fused") else "unfused optimizer"]
    return ", ".join(words)


# --------------------------------------------------------------------------- interference
def _busy_seconds() -> float:
    """Return the machine's busy CPU seconds since boot, all cores together (Linux /proc/stat)."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def others_share(fn: Callable, *args, **kwargs) -> tuple[object, float | None]:
    """Run fn; return (its result, the share of all cores other processes used meanwhile, None if unknown)."""
    try:
        busy0, own0, t0 = _busy_seconds(), sum(os.times()[:4]), time.perf_counter()
    except (OSError, ValueError, IndexError):  # no /proc/stat: run without the check
        return fn(*args, **kwargs), None
    result = fn(*args, **kwargs)
    others = (_busy_seconds() - busy0) - (sum(os.times()[:4]) - own0)
    # clamped: clock ticks are coarse, so a short measurement can read above 100%
    return result, min(1.0, max(0.0, others) / ((time.perf_counter() - t0) * (os.cpu_count() or 1)))


class Interference:
    """Redo measurements that other processes disturbed, and say how disturbed the kept ones were."""

    def __init__(self, threshold: float | None = None, tries: int = 3, wait: float = 20.0):
        # a threshold of 1 ($BENCH_MAX_OTHERS=1) never redoes: for a dry run on a busy machine
        self.threshold = float(os.environ.get("BENCH_MAX_OTHERS", DEFAULT_MAX_OTHERS)) if threshold is None \
            else threshold
        self.tries, self.wait = tries, wait
        self.shares: list[float] = []  # other processes' CPU share during each kept measurement

    def quiet(self, fn: Callable, *args, **kwargs):
        """Run a measurement; while other processes took more than the threshold of the CPU, wait and redo it."""
        for attempt in range(self.tries):
            result, share = others_share(fn, *args, **kwargs)
            if share is None or share <= self.threshold or attempt == self.tries - 1:
                if share is not None:
                    self.shares.append(share)
                return result
            print(f"    (other processes used {share:.0%} of the CPU during this measurement: redoing it)",
                  flush=True)
            time.sleep(self.wait)

    def note(self) -> str:
        """Return a sentence on how much CPU other processes took during the kept measurements."""
        if not self.shares:
            return ""
        redo = (f"each is redone, up to {self.tries} times, when they take more than {self.threshold:.0%}"
                if self.threshold < 1 else "none was redone")
        return (f"Other processes used {statistics.median(self.shares):.0%} of the CPU (median; worst "
                f"{max(self.shares):.0%}) during the kept measurements ({redo}).")


class BenchRun:
    """One run of a benchmark script: its start, the machine's load, and the interference of its measurements."""

    def __init__(self, script: str, interference: Interference | None = None):
        self.script = script
        self.started = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
        self.load_before = load_average()
        self.t0 = time.perf_counter()
        self.interference = interference or Interference()

    def quiet(self, fn: Callable, *args, **kwargs):
        """Run a measurement through the interference check (see `Interference.quiet`)."""
        return self.interference.quiet(fn, *args, **kwargs)

    def provenance(self, how: str) -> str:
        """Return the README's opening sentence: script, date, machine, ``how`` it measured, load and interference."""
        minutes = (time.perf_counter() - self.t0) / 60
        return (f"Measured by `benchmarks/{self.script}` on {self.started}: {machine_line()}; {how}. 1-minute load "
                f"average {self.load_before:.1f} before and {load_average():.1f} after the {minutes:.0f}-minute run "
                f"({os.cpu_count()}.0 = every core busy). {self.interference.note()}").rstrip()


# --------------------------------------------------------------------------- turns
def round_robin(jobs: Mapping[str, Callable[[int], cu.Throughput]], rounds: int,
                interference: Interference) -> dict[str, cu.Throughput]:
    """Run every job once per round, in turn (``cu.interleave``), each run through the interference check."""
    checked = {name: (lambda r, job=job: interference.quiet(job, r)) for name, job in jobs.items()}
    return cu.interleave(checked, rounds)


def fit_throughput(model: torch.nn.Module, data: cu.ImageData, batch_size: int, epochs: int,
                   **fit_options) -> cu.Throughput:
    """Train with ``cu.fit`` for one warm-up epoch plus ``epochs``; return fit's own rates of the timed epochs."""
    history = cu.fit(model, data, epochs=1 + epochs, batch_size=batch_size, progress=False, **fit_options)
    rates, seconds = history["images_per_second"][1:], history["seconds"][1:]
    return cu.Throughput(statistics.median(rates), rates, batch_size, round(sum(r * s for r, s in zip(rates, seconds))),
                         sum(seconds), history.step_losses, history["seconds"][0], None, {"loop": "cu.fit"})


def verdict(value: float, target: float) -> str:
    """Return 'met' when ``value`` reaches ``target``, else 'missed'."""
    return "met" if value >= target else "missed"


# --------------------------------------------------------------------------- output
def md_table(rows: list[dict]) -> str:
    """Return rows (dicts with the same keys) as a GitHub markdown table, the first column left-aligned."""
    keys = list(rows[0])
    out = ["| " + " | ".join(map(str, keys)) + " |",
           "|" + "|".join("---" if i == 0 else "---:" for i in range(len(keys))) + "|"]
    out += ["| " + " | ".join(str(r[k]).replace("|", "\\|") for k in keys) + " |" for r in rows]
    return "\n".join(out)


def write_readme_section(title: str, body: str, path: Path = README) -> None:
    """Replace (or append) the ``## title`` section of the README at ``path``, leaving other sections alone."""
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
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines).rstrip() + "\n")
    os.replace(tmp, path)  # readers see the old README or the new one, never half of one


def add_run_arguments(parser: argparse.ArgumentParser, rounds: int, repeats: int) -> None:
    """Add the options every timing script takes: rounds, repeats, --tiny and where the README goes."""
    parser.add_argument("--rounds", type=int, default=rounds, help="round-robin rounds, each with a fresh model")
    parser.add_argument("--repeats", type=int, default=repeats, help="timed blocks (or epochs) per run and round")
    parser.add_argument("--tiny", action="store_true",
                        help="a seconds-long check of the script itself (numbers are not meaningful)")
    parser.add_argument("--readme", action="store_true", help=f"write the section into {README}")
    parser.add_argument("--readme-path", type=Path, default=None, help="write the section into this file instead")


def apply_tiny(args: argparse.Namespace, tiny: Mapping[str, object]) -> argparse.Namespace:
    """With ``--tiny``, override ``args`` by the script's tiny settings; return args."""
    if args.tiny:
        for name, value in tiny.items():
            setattr(args, name, value)
    return args


def publish(args: argparse.Namespace, title: str, body: str) -> None:
    """Print the section and, with --readme or --readme-path, write it into that README."""
    print("\n" + body)
    path = args.readme_path or (README if args.readme else None)
    if path is not None:
        write_readme_section(title, body, path)
        print(f"\nwrote the '{title}' section of {path}")


def command_line(script: str, argv: list[str]) -> str:
    """Return the command that ran a benchmark script, quoted so that it can be pasted into a shell."""
    return "python " + " ".join(shlex.quote(a) for a in [f"benchmarks/{script}", *argv])
