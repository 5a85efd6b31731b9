"""How long the course takes to run: every notebook headless in a profile, outputs not written.

    COURSE_DATA_DIR=/work/shared/datasets flock /tmp/course-cpu.lock \\
        .venv/bin/python benchmarks/bench_course_runtime.py --profile smoke
    ... bench_course_runtime.py --profile laptop notebooks/02_*.ipynb   # some notebooks only

Prints seconds per notebook (kernel start included) and its slowest cell, then checks the
targets: smoke, all notebooks together <= 10 min and each <= 60 s (CI); laptop, each <= 5 min.
Exits 1 if a notebook fails or a target is missed. Uses benchmarks/run_notebooks.py to execute.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

import run_notebooks
from _common import machine_line, md_table

ROOT = Path(__file__).resolve().parent.parent

# profile -> (seconds allowed for all notebooks together, seconds allowed per notebook)
TARGETS = {"smoke": (600.0, 60.0), "laptop": (None, 300.0), "gpu": (None, None)}


def check(records: list[dict], profile: str) -> list[str]:
    """Return the targets that ``records`` miss (empty when all are met)."""
    total_limit, each_limit = TARGETS[profile]
    problems = [f"{r['notebook']} failed: {r['error']}" for r in records if r["error"]]
    if each_limit is not None:
        problems += [f"{r['notebook']} took {r['seconds']:.0f} s > {each_limit:.0f} s"
                     for r in records if r["seconds"] > each_limit]
    total = sum(r["seconds"] for r in records)
    if total_limit is not None and total > total_limit:
        problems.append(f"all notebooks took {total:.0f} s > {total_limit:.0f} s")
    return problems


def markdown(records: list[dict], profile: str) -> str:
    """Return the records as a Markdown table with a total row."""
    total_limit, each_limit = TARGETS[profile]
    rows = [{"notebook": r["notebook"], "seconds": f"{r['seconds']:.1f}",
             "slowest cell (s)": f"{r['slowest_cell_seconds']:.1f}", "slowest cell": f"`{r['slowest_cell']}`",
             "status": "error" if r["error"] else ("over target" if each_limit and r["seconds"] > each_limit else "ok")}
            for r in records]
    rows.append({"notebook": f"**all {len(records)}**", "seconds": f"**{sum(r['seconds'] for r in records):.1f}**",
                 "slowest cell (s)": "", "slowest cell": "",
                 "status": f"target <= {total_limit:.0f} s" if total_limit else ""})
    return md_table(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: notebooks/*.ipynb)")
    parser.add_argument("--profile", default="smoke", choices=sorted(TARGETS))
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    parser.add_argument("--json", type=Path, help="also write the records to this JSON file")
    args = parser.parse_args()
    shared = ROOT.parent / "shared" / "datasets"
    if "COURSE_DATA_DIR" not in os.environ and shared.is_dir():
        os.environ["COURSE_DATA_DIR"] = str(shared)  # as .ci/run does: CIFAR-10 from the offline copy
    paths = [Path(p) for p in (args.notebooks or sorted(glob.glob(str(ROOT / "notebooks" / "*.ipynb"))))]
    if not paths:
        print("No notebooks found.")
        return 1
    machine = machine_line(stamp=True)
    print(f"# machine: {machine}")
    print(f"# command: python {' '.join(sys.argv)}  (profile {args.profile}, outputs not written)", flush=True)
    records = []
    for path in paths:
        r = run_notebooks.run(path, args.profile, write=False, timeout=args.timeout)
        records.append(r)
        print(f"{r['notebook']:45s} {r['seconds']:7.1f} s  slowest cell {r['slowest_cell_seconds']:6.1f} s  "
              f"{r['slowest_cell']}{'  ERROR ' + r['error'] if r['error'] else ''}", flush=True)
    print()
    print(markdown(records, args.profile))
    problems = check(records, args.profile)
    print("\nAll targets met." if not problems else "\nMissed: " + "; ".join(problems))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "profile": args.profile,
                                         "records": records, "missed": problems}, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
