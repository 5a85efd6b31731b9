"""Execute course notebooks headless in a profile; report seconds per notebook and the slowest cell.

    python benchmarks/run_notebooks.py --profile smoke                 # time every notebook
    python benchmarks/run_notebooks.py --profile laptop --write notebooks/01_*.ipynb   # store outputs
    python benchmarks/run_notebooks.py --normalize                     # re-store without running
    python benchmarks/run_notebooks.py --profile gpu --small-data 3000  # the gpu profile's code paths, on a CPU

``--write`` saves the executed notebook in place (how the committed outputs are made), in the
form JupyterLab itself saves (so opening and autosaving a notebook changes nothing) and with each
progress bar's text showing its final state (what GitHub, nbviewer and a JupyterLab that does not
restore widgets display) rather than the 0% it started at.
"""
from __future__ import annotations

import argparse
import glob
import html
import json
import os
import sys
import tempfile
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


# JupyterLab saves through the server's nbformat, after the browser has parsed the notebook: JavaScript
# numbers have no int/float distinction, so 188.0 comes back as 188; the kernel is ipykernel's.
KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
BAR_WIDTH = 10


def _ints_for_integral_floats(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints_for_integral_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints_for_integral_floats(v) for v in value]
    return value


def progress_text(widgets: dict, model_id: str) -> str | None:
    """Return a tqdm bar's final state as text (``desc: 100%|██████████| 188/188 [...]``), or None if not a bar."""
    box = widgets.get(model_id, {}).get("state", {})
    parts = [widgets.get(c.removeprefix("IPY_MODEL_"), {}).get("state", {}) for c in box.get("children", [])]
    if len(parts) != 3 or "max" not in parts[1]:
        return None
    left, bar, right = parts
    done = round(BAR_WIDTH * bar["value"] / bar["max"]) if bar["max"] else 0
    text = lambda part: html.unescape(part.get("value", "")).replace("\xa0", " ").replace("\u2007", " ")
    return f"{text(left)}|{'█' * done}{' ' * (BAR_WIDTH - done)}|{text(right)}"


def store_form(nb):
    """Return ``nb`` in JupyterLab's saved form, each stored progress bar's text showing its final state."""
    nb = nbformat.from_dict(_ints_for_integral_floats(nb))
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    widgets = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(WIDGET_VIEW)
            final = progress_text(widgets, view["model_id"]) if view else None
            if final is not None:
                output["data"]["text/plain"] = final
    return nb


def run(path: Path, profile: str, write: bool, timeout: int) -> dict:
    """Execute one notebook in ``profile``; return its timing record."""
    nb = nbformat.read(path, as_version=4)
    os.environ["COURSE_PROFILE"] = profile
    if write:  # a stored notebook shows its figures: matplotlib's inline backend, not a file backend such as Agg
        os.environ.pop("MPLBACKEND", None)
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
        nbformat.write(store_form(nb), path)
    slowest = max(client.cell_seconds, default=(0.0, -1, ""))
    return {"notebook": path.name, "profile": profile, "seconds": round(seconds, 1),
            "slowest_cell_seconds": round(slowest[0], 1), "slowest_cell": f"[{slowest[1]}] {slowest[2]}",
            "error": error}


SMALL_DATASETS = ("cifar10", "fashion-mnist")


def write_small_data(dest: Path, train_images: int) -> list[Path]:
    """Write small packs of the course's datasets under ``dest``: ``train_images`` of each training split, a third
    as many test images, the same random images every time; return the files.

    A profile that takes whole splits (gpu) then runs its own code paths (open sizes, its batch and epochs) on a
    CPU in minutes: a check that the chapters run in it, not a measurement (never stored).
    """
    import course_utils as cu  # here, not at the top: the other modes need no torch

    written = []
    for name in SMALL_DATASETS:
        for split, n in (("train", train_images), ("test", max(1, train_images // 3))):
            data = cu.load_dataset(name, split).subset(n)
            written.append(cu.write_pack(cu.data.pack_path(name, split, dest), data.images.permute(0, 2, 3, 1).numpy(),
                                         data.labels.numpy(), data.classes, info={"small": f"subset({n}) of {split}"}))
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="*", help="notebooks to run (default: notebooks/*.ipynb)")
    parser.add_argument("--profile", default="smoke", choices=["smoke", "laptop", "gpu"])
    parser.add_argument("--write", action="store_true", help="save executed outputs back into the notebooks")
    parser.add_argument("--timeout", type=int, default=900, help="seconds allowed per cell")
    parser.add_argument("--json", type=Path, help="also write the records to this JSON file")
    parser.add_argument("--normalize", action="store_true",
                        help="only re-store the notebooks in store_form (no execution)")
    parser.add_argument("--small-data", type=int, metavar="N",
                        help="run on small copies of the datasets (N training images each): the gpu profile's code "
                             "paths on a CPU in minutes; nothing is stored")
    args = parser.parse_args()
    if args.small_data and args.write:
        parser.error("--small-data runs are checks, not outputs: leave out --write")
    paths = [Path(p) for p in (args.notebooks or sorted(glob.glob(str(ROOT / "notebooks" / "*.ipynb"))))]
    if args.normalize:
        for path in paths:
            nbformat.write(store_form(nbformat.read(path, as_version=4)), path)
            print(f"stored {path} in JupyterLab's form, progress bars at their final state")
        return 0
    if args.small_data:
        small = Path(tempfile.mkdtemp(prefix="course_small_data_"))
        write_small_data(small, args.small_data)
        os.environ["COURSE_DATA_DIR"] = str(small)  # the kernels inherit it
        print(f"small copies of {', '.join(SMALL_DATASETS)} in {small}: {args.small_data} training images each")
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
