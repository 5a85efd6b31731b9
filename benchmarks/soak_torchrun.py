"""Launch the two-process training run many times and count the launches that fail (a soak test).

    python benchmarks/soak_torchrun.py --launches 100 --load idle busy --label after-fix

Each launch is chapter 10's command, through the chapter's own launcher (`torchrun_train`):

    torchrun --nproc-per-node=2 -m course_utils.train --dataset fashion-mnist --latent 196
             --profile smoke --epochs 1 --test --quiet            (OMP_NUM_THREADS=1 per process)

``--load idle`` launches on the machine as it is; ``--load busy`` first starts one CPU-bound
process per core (a Python busy loop, stopped at the end; ``--busy-per-core 3`` starts three), as
a learner's machine running something else would be. A launch that fails is kept with the first line of its error and the
last lines the failing process printed. Each launch also records ``others_cpu_share``, the
share of all cores that other programs took meanwhile (measured by `torchrun_train`), so an
"idle" run that was not idle shows it. Rows go to ``benchmarks/results/soak_torchrun.jsonl``
(one per launch, labelled), and the report prints the failures per load.

A benchmark, not a test: `tests/test_distributed.py` launches the same run a few times in CI.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

import _common
import course_utils as cu
from course_utils.chapters import _ch10_launch as ch10

RESULTS = _common.HERE / "results" / "soak_torchrun.jsonl"
RUN = {"dataset": "fashion-mnist", "latent": 196, "profile": "smoke", "epochs": 1, "test": True, "quiet": True}


def start_busy_processes(count: int) -> list[subprocess.Popen]:
    """Start ``count`` processes that each keep one core busy until stopped."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def launch_once(timeout_s: float) -> dict:
    """Launch the two-process run once; return whether it succeeded, its time and, if it failed, why."""
    t0 = time.perf_counter()
    try:
        report = ch10.torchrun_train(2, timeout_s=timeout_s, echo=False, **RUN)
    except cu.CourseError as e:
        return {"ok": False, "seconds": time.perf_counter() - t0, "error": str(e)}
    return {"ok": True, "seconds": report["launch_seconds"], "others_cpu_share": report["others_cpu_share"]}


def soak(load: str, launches: int, timeout_s: float, label: str, results: Path = RESULTS,
         busy_per_core: int = 1) -> list[dict]:
    """Run ``launches`` launches under ``load`` ('idle' or 'busy'); append each row to ``results``; return the rows."""
    busy = start_busy_processes(busy_per_core * ch10._cores()) if load == "busy" else []
    if busy:
        load = f"busy x{busy_per_core}" if busy_per_core > 1 else load
    rows = []
    try:
        bar = tqdm(range(launches), desc=f"{label}, {load}", unit="launch")
        for i in bar:
            row = {"label": label, "load": load, "launch": i + 1, "machine": _common.machine_line(),
                   "time": time.strftime("%Y-%m-%d %H:%M:%S"), **launch_once(timeout_s)}
            rows.append(row)
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            bar.set_postfix(failures=sum(not r["ok"] for r in rows))
            if not row["ok"]:
                tqdm.write(f"launch {i + 1} failed: {row['error'].splitlines()[0]}")
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    return rows


def summary(rows: list[dict]) -> str:
    """Return one line: failures out of launches, the median launch time and the others' median CPU share."""
    failed = [r for r in rows if not r["ok"]]
    shares = [r["others_cpu_share"] for r in rows if r.get("others_cpu_share") is not None]
    share = f", other programs' median CPU share {statistics.median(shares):.0%}" if shares else ""
    return (f"{len(failed)} failed of {len(rows)} launches, median {statistics.median(r['seconds'] for r in rows):.1f}"
            f" s per launch{share}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--launches", type=int, default=100, help="launches per load (default: %(default)s)")
    p.add_argument("--load", nargs="+", default=["idle", "busy"], choices=["idle", "busy"])
    p.add_argument("--label", default="soak", help="a name for this run in the results file, e.g. before-fix")
    p.add_argument("--timeout", type=float, default=300, help="seconds before a launch counts as hung")
    p.add_argument("--results", type=Path, default=RESULTS, help="the JSON-lines file rows are appended to")
    p.add_argument("--busy-per-core", type=int, default=1, help="busy processes per core under --load busy")
    args = p.parse_args(argv)
    print(_common.machine_line(stamp=True))
    print(f"course_utils from {Path(cu.__file__).parent}")
    for load in args.load:
        rows = soak(load, args.launches, args.timeout, args.label, args.results, args.busy_per_core)
        print(f"{args.label}, {rows[0]['load']}: {summary(rows)}")
        for row in rows:
            if not row["ok"]:
                print(f"  launch {row['launch']}: {row['error']}")


if __name__ == "__main__":
    main()
