"""Execute course notebooks headless in a profile; report seconds per notebook and the slowest cell.

    python benchmarks/run_notebooks.py --profile smoke                 # time every notebook
    python benchmarks/run_notebooks.py --profile laptop --write notebooks/01_*.ipynb   # store outputs

``--write`` saves the executed notebook in place (how the committed outputs are made).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent


class TimedClient(NotebookClient):
    """A NotebookClient that records each code cell's wall time."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.cell_seconds: list[tuple[float, int, str]] = []

    async def async_execute_cell(self, cell, cell_index, *args, **kwargs):
        t0 = time.perf_counter()
        self.current_cell = cell_index  # so a failure can name its cell
        result = await super().async_execute_cell(cell, cell_index, *args, **kwargs)
        if cell.cell_type == "code":
            first = (cell.source.strip().splitlines() or [""])[0][:60]
            self.cell_seconds.append((time.perf_counter() - t0, cell_index, first))
        return result


def run(path: Path, profile: str, write: bool, timeout: int) -> dict:
    """Execute one notebook in ``profile``; return its timing record."""
    nb = nbformat.read(path, as_version=4)
    os.environ["COURSE_PROFILE"] = profile
    client = TimedClient(nb, timeout=timeout, kernel_name="python3",
                         resources={"metadata": {"path": str(path.parent)}})
    t0 = time.perf_counter()
    error = None
    try:
        client.execute()
    except Exception as e:  # report and go on with the next notebook
        if getattr(e, "ename", None):  # a cell raised: name the cell and the learner-facing error
            where = f" in cell [{client.current_cell}]" if hasattr(client, "current_cell") else ""
            error = f"{e.ename}{where}: {str(getattr(e, 'evalue', '')).splitlines()[0][:300] if e.evalue else ''}"
        else:
            error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    seconds = time.perf_counter() - t0
    if write and error is None:
        nbformat.write(nb, path)
    slowest = max(client.cell_seconds, default=(0.0, -1, ""))
    return {"notebook": path.name, "profile": profile, "seconds": round(seconds, 1),
            "slowest_cell_seconds": round(slowest[0], 1), "slowest_cell": f"[{slowest[1]}] {slowest[2]}",
            "error": error}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: notebooks/*.ipynb)")
    parser.add_argument("--profile", default="smoke", choices=["smoke", "laptop", "gpu"])
    parser.add_argument("--write", action="store_true", help="save executed outputs back into the notebooks")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    parser.add_argument("--json", type=Path, help="also write the records to this JSON file")
    args = parser.parse_args()
    paths = [Path(p) for p in (args.notebooks or sorted(glob.glob(str(ROOT / "notebooks" / "*.ipynb"))))]
    records = []
    print(f"{'notebook':45s} {'seconds':>8s} {'slowest cell':>13s}  cell")
    for path in paths:
        r = run(path, args.profile, args.write, args.timeout)
        records.append(r)
        status = f"  ERROR {r['error']}" if r["error"] else ""
        print(f"{r['notebook']:45s} {r['seconds']:8.1f} {r['slowest_cell_seconds']:13.1f}  "
              f"{r['slowest_cell']}{status}", flush=True)
    total = sum(r["seconds"] for r in records)
    print(f"{'total':45s} {total:8.1f}")
    if args.json:
        args.json.write_text(json.dumps(records, indent=2))
    return 1 if any(r["error"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
