"""benchmarks/gpu_suite.py: carried data, the whole suite in its tiny mode on the CPU, the time guard, the results."""
from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch

import course_utils as cu
from course_utils.chapters import _ch05_measurements as ch05

from conftest import CIFAR_DIR, load_script, needs_cifar

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_suite.py"


@pytest.fixture(scope="module")
def suite():
    """Return benchmarks/gpu_suite.py as a module (its siblings _common and train_references on the path)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT / "benchmarks"))
        yield load_script("benchmarks/gpu_suite.py")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """Return a small data root: 300 real CIFAR-10 images as its 'train' split, 150 others as 'test'."""
    if CIFAR_DIR is None:
        pytest.skip("needs the CIFAR-10 packs (COURSE_DATA_DIR)")
    real = cu.read_pack(CIFAR_DIR / "cifar10" / "test.npz")
    root = tmp_path_factory.mktemp("source")
    for name, rows in {"train": slice(0, 300), "test": slice(300, 450)}.items():
        cu.write_pack(cu.data.pack_path("cifar10", name, root), real.images[rows].permute(0, 2, 3, 1).numpy(),
                      real.labels[rows].numpy(), real.classes)
    return root


@pytest.fixture(scope="module")
def carry(suite, source, tmp_path_factory):
    """Return a carry folder prepared from ``source`` in parts of 128 images (128, 128, 44)."""
    dest = tmp_path_factory.mktemp("carry")
    suite.prepare_carry(source, dest, part_images=128, check_images=100)
    return dest


# What the GPU machine's python3 may lack (it has no course environment): the suite must not need any of them.
# (Not matplotlib: torchmetrics imports it whenever its package metadata says it is installed, as it is there.)
ABSENT = ("skimage", "ipywidgets", "IPython", "nbclient", "nbformat", "nbval", "ipykernel", "jupyter_client")
WITHOUT_EXTRAS = f"""
import runpy, sys
sys.modules.update(dict.fromkeys({ABSENT!r}))  # None there: import fails, importlib.util.find_spec says None
sys.argv = [{str(SCRIPT)!r}, *sys.argv[1:]]
sys.path.insert(0, {str(SCRIPT.parent)!r})
runpy.run_path({str(SCRIPT)!r}, run_name="__main__")
"""


def references(suite):
    """Return benchmarks/train_references.py, as the suite imported it."""
    return sys.modules["train_references"]


def run_suite(*args: str) -> subprocess.CompletedProcess:
    """Run the suite as on the GPU machine (PYTHONPATH=., none of ABSENT importable), on the CPU, one thread."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_MAX_OTHERS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", WITHOUT_EXTRAS, "--device", "cpu", *args], capture_output=True,
                          text=True, timeout=900, env=env, cwd=ROOT)


@pytest.fixture(scope="module")
def tiny(carry, tmp_path_factory):
    """Run the whole suite once in --tiny mode on the carried parts; return (results, stdout, results path)."""
    out = tmp_path_factory.mktemp("tiny") / "gpu_suite.json"
    work = out.parent / "work"
    done = run_suite("--tiny", "--data", str(carry), "--work", str(work), "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout, out


# --------------------------------------------------------------------------- carried data
def test_prepared_parts_join_back_into_the_same_images(suite, source, carry, tmp_path):
    parts = sorted((carry / "cifar10").glob("train-*.npz"))
    assert [p.name for p in parts] == ["train-0.npz", "train-1.npz", "train-2.npz"]
    info = suite.join_carry(carry, tmp_path / "work")
    assert info["complete"] and info["train_images"] == 300 and info["parts_present"] == [0, 1, 2]
    original = cu.read_pack(cu.data.pack_path("cifar10", "train", source))
    joined = cu.read_pack(tmp_path / "work" / "cifar10" / "train.npz")
    assert torch.equal(joined.images, original.images) and torch.equal(joined.labels, original.labels)
    assert joined.classes == original.classes
    test = cu.read_pack(tmp_path / "work" / "cifar10" / "test.npz")
    expected = cu.read_pack(cu.data.pack_path("cifar10", "test", source)).subset(100)
    assert torch.equal(test.images, expected.images)  # the references' check subset, same images


def test_a_missing_part_is_joined_around_and_reported(suite, carry, tmp_path):
    partial = tmp_path / "partial"
    shutil.copytree(carry, partial)
    (partial / "cifar10" / "train-1.npz").unlink()
    info = suite.join_carry(partial, tmp_path / "work")
    assert not info["complete"] and info["parts_present"] == [0, 2] and info["train_images"] == 128 + 44
    joined = cu.read_pack(tmp_path / "work" / "cifar10" / "train.npz")
    with np.load(carry / "cifar10" / "train-2.npz") as z:
        assert np.array_equal(joined.images[128:].permute(0, 2, 3, 1).numpy(), z["images"])


def test_a_damaged_part_is_refused(suite, carry, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(carry, broken)
    path = broken / "cifar10" / "train-0.npz"
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = arrays["images"].copy()
    arrays["images"][0, 0, 0, 0] ^= 1
    np.savez_compressed(path, **arrays)
    with pytest.raises(cu.CorruptPackError, match="train-0.npz"):
        suite.join_carry(broken, tmp_path / "work")


def test_the_prepare_option_writes_parts_small_enough_to_carry(source, tmp_path):
    done = run_suite("--prepare-carry", str(tmp_path / "carry"), "--source", str(source), "--part-images", "200")
    assert done.returncode == 0, done.stderr[-2000:]
    files = sorted(p.name for p in (tmp_path / "carry" / "cifar10").iterdir())
    assert files == ["test.npz", "train-0.npz", "train-1.npz"]
    assert all(p.stat().st_size < 16 * 2**20 for p in (tmp_path / "carry" / "cifar10").iterdir())


def test_gitignore_keeps_carried_data_out_of_the_repository():
    done = subprocess.run(["git", "check-ignore", "-q", "carry/cifar10/train-0.npz"], cwd=ROOT)
    assert done.returncode == 0


# --------------------------------------------------------------------------- the tiny run
def test_tiny_run_records_every_part_and_where_it_ran(suite, tiny):
    doc, stdout, _ = tiny
    assert list(doc["parts"]) == list(suite.PARTS) and doc["tiny"] is True
    assert {p: doc["parts"][p]["status"] for p in suite.PARTS} == {
        "ladder": "done", "memory": "done", "references": "done", "notebooks": "skipped"}
    assert "--tiny" in doc["parts"]["notebooks"]["reason"]
    h = doc["header"]
    assert h["device"] == "cpu" and h["card"] is None and h["driver"] is None and h["torch"] == torch.__version__
    assert dt.datetime.fromisoformat(h["date"]) and cu.cpu_name() in h["machine"]
    assert doc["data"]["complete"] and doc["data"]["train_images"] == 300 and doc["data"]["test_images"] == 100
    assert "GPU suite on cpu" in stdout and stdout.rstrip().splitlines()[-1].startswith("wrote ")


def test_tiny_ladder_rows_skipped_on_the_cpu_carry_their_reasons(suite, tiny):
    rows = tiny[0]["parts"]["ladder"]["rows"]
    rungs = [name for name, _ in ch05.ladder_changes(False, suite.SEED_BATCH, suite.TINY["larger_batches"],
                                                     suite.TINY["compile"])]
    assert [r["setup"] for r in rows][2:] == rungs
    assert rows[0]["role"] == "baseline" and rows[0]["settings"]["loop"] == "tutorial"
    assert rows[1]["role"] == "fit" and rows[1]["settings"]["loop"] == "cu.fit"
    by_name = {r["setup"]: r for r in rows}
    assert by_name["+ fp16 autocast + GradScaler"]["status"] == "skipped"
    assert "CUDA" in by_name["+ fp16 autocast + GradScaler"]["reason"]
    assert by_name["+ torch.compile"]["status"] == "skipped" and "--tiny" in by_name["+ torch.compile"]["reason"]
    for r in rows:
        if r["status"] == "measured":
            assert r["images_per_second"] == pytest.approx(statistics.median(r["rates"])) and r["images_per_second"] > 0
        else:
            assert r["reason"]


def test_tiny_speed_target_is_computed_from_the_rows_in_the_file(suite, tiny):
    part = tiny[0]["parts"]["ladder"]
    measured = [r for r in part["rows"] if r["status"] == "measured"]
    base = measured[0]["images_per_second"]
    best = max(measured[1:], key=lambda r: r["images_per_second"])
    target = part["target"]
    assert target["best"] == best["setup"] and target["ratio"] == pytest.approx(best["images_per_second"] / base)
    assert target["target"] == suite.SPEED_TARGET == 10
    assert target["verdict"] == ("met" if target["ratio"] >= 10 else "missed")


def test_tiny_memory_rows_are_skipped_without_cuda_and_fit_trains_at_the_batch_asked(suite, tiny):
    part = tiny[0]["parts"]["memory"]
    assert len(part["rows"]) == 2 * len(suite.TINY["memory_batches"])
    assert all(r["status"] == "skipped" and "no CUDA" in r["reason"] for r in part["rows"])
    fallback = part["fallback"]
    assert fallback["used_batch"] == fallback["asked_batch"] == max(suite.TINY["memory_batches"])
    assert not fallback["fell_back"] and np.isfinite(fallback["train_loss"])


def test_tiny_references_are_timed_scored_and_judged_from_their_own_numbers(suite, tiny):
    part = tiny[0]["parts"]["references"]
    rows = part["rows"]
    expected = [(code, label) for code in suite.CODES for label in suite.gpu_candidates((3, 32, 32), code)]
    assert [(r["code_size"], r["candidate"]) for r in rows] == expected
    assert ("cifar10-384", "flat, width 32") not in {(r["name"], r["candidate"]) for r in rows}  # over 5 MB in float16
    for r in rows:
        assert r["epochs"] == 1 and r["train_images"] == 200 and r["test_images"] == 100
        assert r["recipe"]["batch_size"] == suite.TINY["reference_batch"] and r["recipe"]["optimizer"] == "adamw"
        assert r["images_per_second"] == pytest.approx(r["images_seen"] / r["fit_seconds"])
        assert r["seconds"] >= r["fit_seconds"] > 0 and 0 < r["val_mse"] < 1 and 0 < r["test_mse"] < 1
        assert r["verdict"] == ("met" if r["seconds"] <= 80 else "missed")
    for code in suite.CODES:  # one model kept per code size: the lowest validation MSE
        mine = [r for r in rows if r["code_size"] == code]
        assert [r["selected"] for r in mine] == [r is min(mine, key=lambda r: r["val_mse"]) for r in mine]
    slowest = max(rows, key=lambda r: r["seconds"])
    assert part["target"]["slowest"] == slowest["name"]
    assert part["target"]["verdict"] == ("met" if slowest["seconds"] <= 80 else "missed")
    assert "not comparable" in part["note"]  # 200 images, not the references' 45,000


def test_tiny_bundle_holds_the_kept_models_in_half_precision_and_loads_safely(suite, tiny):
    doc, _, path = tiny
    bundle = torch.load(path.with_name(suite.BUNDLE_NAME), map_location="cpu", weights_only=True)
    assert bundle["complete"] is False  # trained on part of the split: --import-gpu refuses it
    assert sorted(bundle["models"]) == sorted(f"cifar10-{c}" for c in suite.CODES)
    kept = {r["name"]: r for r in doc["parts"]["references"]["rows"] if r["selected"]}
    for name, entry in bundle["models"].items():
        assert entry["row"]["candidate"] == kept[name]["candidate"]
        model = cu.ConvAutoencoder(**entry["architecture"])
        model.load_state_dict(entry["state_dict"])
        weights = [entry["state_dict"][k] for k, _ in model.named_parameters()]
        assert all(w.dtype == torch.float16 for w in weights)
        assert entry["state_dict"][next(k for k in entry["state_dict"] if k.endswith("running_var"))].dtype == torch.float32


def test_import_refuses_a_bundle_trained_on_part_of_the_split(suite, tiny, tmp_path):
    _, _, path = tiny
    with pytest.raises(cu.CourseError, match="part of the training split"):
        references(suite).import_gpu(path.with_name(suite.BUNDLE_NAME), path, "test")


@needs_cifar
def test_import_keeps_the_shipped_reference_when_it_is_better_on_validation(suite, tiny, tmp_path):
    from course_utils import pretrained as pt
    _, _, path = tiny
    bundle = torch.load(path.with_name(suite.BUNDLE_NAME), map_location="cpu", weights_only=True)
    bundle["complete"] = True  # pretend: a model trained one epoch on 200 images cannot beat a reference anyway
    bundle["models"] = {"cifar10-64": bundle["models"]["cifar10-64"]}
    fake = tmp_path / "bundle.pt"
    torch.save(bundle, fake)
    before = pt.MANIFEST.read_bytes()
    rows = references(suite).import_gpu(fake, path, "test")
    assert [r["adopted"] for r in rows] == [False] and rows[0]["gpu_val_mse"] > rows[0]["shipped_val_mse"]
    assert pt.MANIFEST.read_bytes() == before


def test_stored_results_read_back_as_the_chapter_s_table(tiny):
    doc, _, path = tiny
    stored = ch05.gpu_results(path)
    assert stored.header["torch"] == torch.__version__ and stored.header["card"] is None
    rows = doc["parts"]["ladder"]["rows"]
    assert list(stored.ladder.index) == [r["setup"] for r in rows]
    assert stored.ladder["x article's loop"].iloc[0] == 1.0
    assert stored.ladder.loc["+ fp16 autocast + GradScaler", "status"] == "skipped"
    assert "CUDA" in stored.ladder.loc["+ fp16 autocast + GradScaler", "note"]
    assert stored.target["verdict"] == doc["parts"]["ladder"]["target"]["verdict"]


def test_the_shipped_gpu_results_are_the_repository_s_and_read_back_whole():
    shipped = ROOT / "course_utils" / "pretrained" / "gpu_suite.json"
    assert shipped.read_bytes() == (ROOT / "benchmarks" / "results" / "gpu_suite.json").read_bytes()
    stored = ch05.gpu_results()
    assert stored.path == shipped and stored.header["card"] == "NVIDIA H200" and stored.header["device"] == "cuda"
    assert stored.target["verdict"] == ("met" if stored.target["ratio"] >= 10 else "missed")
    doc = json.loads(shipped.read_text())
    measured = [r for r in doc["parts"]["memory"]["rows"] if r["status"] == "measured"]
    assert stored.memory.size == len(measured)
    for r in measured:
        assert stored.memory.loc[r["batch_size"], r["model"]] == round(r["peak_mib"])


def test_gpu_ladder_lessons_are_computed_from_the_stored_rows():
    stored = ch05.gpu_results()
    lines = ch05.gpu_ladder_lessons(stored)
    rate = stored.ladder["images/s"]
    batch_rows = [n for n in stored.ladder.index if n.startswith("+ larger batch")]
    base = next(n for n in stored.ladder.index if n.startswith("uint8 on the device"))
    assert f"{rate[batch_rows[-1]] / rate[base]:.2f}x on the GPU" in lines[1]
    assert lines[-1].startswith(f"Best on that GPU: {stored.target['best']}, {stored.target['ratio']:.2f}x")
    assert any(line.startswith("+ torch.compile: ") for line in lines)
    here = {"uint8 on the device, batch 64": cu.Throughput(100.0, [100.0], 64, 640, 6.4, []),
            "+ larger batch (256)": cu.Throughput(150.0, [150.0], 256, 2560, 17.0, [])}
    assert "1.50x here (64 => 256 images)" in ch05.gpu_ladder_lessons(stored, here)[1]


def test_gpu_results_is_none_without_a_stored_file_and_says_how_to_make_one(monkeypatch, tmp_path):
    monkeypatch.setattr(ch05, "_gpu_results_candidates", lambda: [tmp_path / "none.json"])
    assert ch05.gpu_results() is None
    with pytest.raises(cu.CourseError, match="gpu_suite.py"):
        ch05.gpu_results(tmp_path / "missing.json")
    (tmp_path / "other.json").write_text('{"models": []}')
    with pytest.raises(cu.CourseError, match="not a results file"):
        ch05.gpu_results(tmp_path / "other.json")


# --------------------------------------------------------------------------- the time guard
def test_budget_cuts_when_spent_or_when_the_next_row_would_overspend(suite):
    with pytest.raises(suite.PartCut, match="cut before 'next'"):
        suite.Budget(0).check("next")
    with pytest.raises(suite.PartCut, match="estimated"):
        suite.Budget(1000).check("next", estimate=5000)
    suite.Budget(1000).check("next", estimate=1)  # room left: no cut


def test_a_part_over_its_budget_is_cut_between_rows_and_the_rest_is_kept(suite, carry, tmp_path, monkeypatch):
    class TwoRows(suite.Budget):
        """A budget that lets two rows start, then is spent (instead of waiting for a clock)."""

        def __init__(self, seconds):
            super().__init__(seconds)
            self.checks = 0

        def check(self, next_row, estimate=0.0):
            self.checks += 1
            if self.checks > 2:
                raise suite.PartCut(f"cut before '{next_row}': test budget of two rows")

    monkeypatch.setattr(suite, "Budget", TwoRows)
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))  # the suite points it at its joined packs; undone after
    suite.split.cache_clear()
    out = tmp_path / "cut.json"
    assert suite.main(["--tiny", "--device", "cpu", "--data", str(carry), "--work", str(tmp_path / "w"),
                       "--out", str(out), "--parts", "ladder", "references"]) == 0
    suite.split.cache_clear()
    doc = json.loads(out.read_text())
    ladder, refs = doc["parts"]["ladder"], doc["parts"]["references"]
    assert ladder["status"] == "cut" and "the ladder's rungs" in ladder["reason"]
    assert [r["role"] for r in ladder["rows"]] == ["baseline", "fit"]  # rows before the cut are kept
    assert refs["status"] == "cut" and [r["code_size"] for r in refs["rows"]] == [64, 64, 128, 128]
    assert refs["target"]["verdict"] == "missed" and refs["target"]["models_measured"] == 4  # not every size ran
    assert doc["parts"]["memory"]["status"] == "skipped" and "--parts" in doc["parts"]["memory"]["reason"]


def test_a_spent_budget_still_writes_the_whole_file(carry, tmp_path):
    out = tmp_path / "spent.json"
    done = run_suite("--tiny", "--data", str(carry), "--work", str(tmp_path / "w"), "--out", str(out),
                     "--part-budget-s", "0")
    assert done.returncode == 0, done.stderr[-2000:]
    parts = json.loads(out.read_text())["parts"]
    assert {p: parts[p]["status"] for p in parts} == {"ladder": "cut", "memory": "cut", "references": "cut",
                                                      "notebooks": "skipped"}
    assert all("budget" in parts[p]["reason"] for p in ("ladder", "memory", "references"))


def test_parts_run_in_the_order_asked_with_their_own_seconds(carry, tmp_path):
    out = tmp_path / "gpu_suite.json"
    done = run_suite("--tiny", "--data", str(carry), "--work", str(tmp_path / "w"), "--out", str(out),
                     "--parts", "memory", "references", "--part-seconds", "memory=0", "references=0")
    assert done.returncode == 0, done.stderr[-2000:]
    parts = json.loads(out.read_text())["parts"]
    assert {p: parts[p]["status"] for p in parts} == {"references": "cut", "ladder": "skipped", "memory": "cut",
                                                      "notebooks": "skipped"}
    assert done.stdout.index("== memory") < done.stdout.index("== references")
    bad = run_suite("--tiny", "--part-seconds", "notebook=60", "--out", str(out))
    assert bad.returncode == 2 and "unknown part(s) ['notebook']" in bad.stderr


def test_a_notebook_runs_as_a_plain_script_where_jupyter_is_missing(suite, tmp_path):
    """The GPU machine has no Jupyter: a notebook's code cells run as one script, magics disabled, display printed."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# not code"),
                nbformat.v4.new_code_cell('import sys\nif "google.colab" in sys.modules:\n    %pip install -q x'),
                nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\n"
                                          "display(6 * 7)")]
    path = tmp_path / "nb.ipynb"
    nbformat.write(nb, path)
    script = suite.notebook_as_script(path)
    assert "pass  # IPython only: %pip install -q x" in script and "not code" not in script
    file = tmp_path / "nb.py"
    file.write_text(script)
    done = subprocess.run([sys.executable, str(file)], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, MPLBACKEND="Agg"))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "42"


def write_notebook(path: Path, *sources: str) -> Path:
    """Write a notebook of a markdown cell then one code cell per source; return its path."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# a title"), *map(nbformat.v4.new_code_cell, sources)]
    nbformat.write(nb, path)
    return path


def test_a_plain_run_times_every_cell_and_names_the_cell_that_failed(suite, tmp_path):
    path = write_notebook(tmp_path / "nb.ipynb", "import time\ntime.sleep(0.3)", "x = 1",
                          "# a comment first\nraise ValueError('no such image: cat.png')", "print('never')")
    row = suite._run_notebook_plain(str(path), 60, "smoke", dict(os.environ))
    assert row["status"] == "failed" and row["error"]["line"] == "ValueError: no such image: cat.png"
    assert row["error"]["cell"] == 3  # the notebook's cell index (the markdown cell is 0), as Jupyter counts
    assert [c["cell"] for c in row["cells"]] == [1, 2, 3]  # the cell after the error never started
    assert row["cells"][0]["seconds"] >= 0.3 and row["slowest_cell"] == "cell 1: import time"
    assert row["cells"][2]["first_line"] == "# a comment first"


def test_processes_a_plain_run_spawns_do_not_run_the_notebook_again(suite, tmp_path):
    # chapter 10 starts processes with torch.multiprocessing.spawn: as from a Jupyter kernel, they must import
    # only what they run, not re-execute the notebook's cells (which would spawn again and fail)
    path = write_notebook(tmp_path / "spawning.ipynb", "import time\nimport torch.multiprocessing as mp",
                          "mp.spawn(time.sleep, nprocs=2)\nprint('both processes ended')")
    row = suite._run_notebook_plain(str(path), 120, "smoke", dict(os.environ))
    assert row["status"] == "passed", row.get("error")


def test_a_plain_run_past_its_timeout_is_recorded_as_cut(suite, tmp_path):
    path = write_notebook(tmp_path / "slow.ipynb", "import time\ntime.sleep(30)")
    row = suite._run_notebook_plain(str(path), 2, "smoke", dict(os.environ))
    assert row["status"] == "cut" and row["reason"] == "ran past its 2 s timeout, in cell 1 (import time)"
    assert row["cells"][-1]["cell"] == 1 and row["cells"][-1]["seconds"] >= 1.5  # timed until it was killed


def test_notebooks_run_in_parallel_are_recorded_in_order_with_the_profile_they_ran_in(suite, tmp_path, monkeypatch):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    write_notebook(folder / "01_a.ipynb", "import os\nassert os.environ['COURSE_PROFILE'] == 'smoke'")
    write_notebook(folder / "02_b.ipynb", "raise RuntimeError('out of memory')")
    write_notebook(folder / "03_c.ipynb", "print(3)")
    monkeypatch.setattr(suite, "NOTEBOOK_DIR", folder)
    res = suite.Results(tmp_path / "out.json", {"parts": {"notebooks": {"status": "running", "rows": []}}})
    cfg = dict(suite.FULL, notebook_profile="smoke", notebook_mode="plain", notebook_jobs=2, notebooks=("01", "02"))
    suite.notebooks_part(res, suite.Budget(120), cfg, torch.device("cpu"), tiny=False)
    part = json.loads((tmp_path / "out.json").read_text())["parts"]["notebooks"]
    assert [(r["notebook"], r["status"]) for r in part["rows"]] == [("01_a.ipynb", "passed"), ("02_b.ipynb", "failed")]
    assert part["profile"] == "smoke" and part["jobs"] == 2 and part["target"] is None  # no 3-minute target on a CPU
    assert part["rows"][1]["error"]["line"] == "RuntimeError: out of memory"


def test_the_gpu_profile_is_not_run_without_a_gpu(suite, tmp_path):
    res = suite.Results(tmp_path / "out.json", {"parts": {"notebooks": {"status": "running", "rows": []}}})
    suite.notebooks_part(res, suite.Budget(60), dict(suite.FULL), torch.device("cpu"), tiny=False)
    assert res.part("notebooks") == {"status": "skipped", "rows": [], "reason": "the gpu profile needs a CUDA GPU"}


def test_notebook_data_is_carried_whole_and_joined_where_the_course_reads_it(suite, source, tmp_path):
    if cu.data.local_copy("fashion-mnist", "test") is None:
        pytest.skip("needs Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    root = tmp_path / "root"
    shutil.copytree(source, root)
    fashion = cu.load_dataset("fashion-mnist", "test").subset(64)  # a pack in the source root is read first
    cu.write_pack(cu.data.pack_path("fashion-mnist", "test", root), fashion.images.permute(0, 2, 3, 1).numpy(),
                  fashion.labels.numpy(), fashion.classes)
    carry = tmp_path / "carry"
    written = suite.prepare_carry(root, carry, part_images=200, check_images=100, notebooks=True)
    assert {p.relative_to(carry).as_posix() for p in written} >= {"cifar10/test-all.npz", "fashion-mnist/test.npz",
                                                                  "fashion-mnist/train.npz"}
    info = suite.join_carry(carry, tmp_path / "work")
    assert info["test_images"] == 150 and info["fashion_mnist_splits"] == ["train", "test"]
    whole = cu.read_pack(tmp_path / "work" / "cifar10" / "test.npz")
    source_test = cu.read_pack(cu.data.pack_path("cifar10", "test", source))
    assert torch.equal(whole.images, source_test.images)
    # the references' check images are the same ones whether the subset or the whole split was carried
    assert torch.equal(whole.subset(100).images, source_test.subset(100).images)
    joined = cu.read_pack(tmp_path / "work" / "fashion-mnist" / "test.npz")
    assert torch.equal(joined.images, fashion.images) and joined.classes == fashion.classes
    assert len(cu.read_pack(tmp_path / "work" / "fashion-mnist" / "train.npz")) == 60_000  # Debian's copy


def test_a_damaged_carried_pack_is_refused(suite, tmp_path):
    data = cu.ImageData(torch.zeros(4, 1, 28, 28, dtype=torch.uint8), torch.arange(4), ["a", "b", "c", "d"])
    path = suite._write_carried_pack(tmp_path / "p.npz", data)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["images"] = arrays["images"].copy()
    arrays["images"][1, 2, 3, 0] = 7
    np.savez_compressed(path, **arrays)
    with pytest.raises(cu.CorruptPackError, match="p.npz"):
        suite._read_carried_pack(path)


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.stem)
def test_every_course_notebook_converts_to_valid_python(suite, path):
    compile(suite.notebook_as_script(path), str(path), "exec")


def test_every_candidate_builds_and_the_file_limit_decides_which_run(suite):
    refs = references(suite)
    for code in suite.CODES:
        fitting = refs.gpu_candidates((3, 32, 32), code, tuple(refs.CANDIDATES))
        for label in refs.CANDIDATES:
            arch = refs.candidate_architecture((3, 32, 32), code, label)
            model = cu.ConvAutoencoder(**arch)
            assert model(torch.rand(2, 3, 32, 32)).shape == (2, 3, 32, 32) and model.code_size == code
            assert (label in fitting) == (2 * cu.count_parameters(model) <= refs.MAX_FILE_BYTES)
    variant = refs.candidate_architecture((3, 32, 32), 128, "flat, width 32, 2 convs, GELU")
    assert variant["convs_per_stage"] == 2 and variant["activation"] == "gelu"
    assert "flat, width 32" not in refs.gpu_candidates((3, 32, 32), 384)  # 6.4 MB in float16: over the limit


def test_a_code_size_where_no_candidate_fits_the_file_limit_is_skipped_with_the_reason(carry, tmp_path):
    out = tmp_path / "gpu_suite.json"
    done = run_suite("--tiny", "--data", str(carry), "--work", str(tmp_path / "w"), "--out", str(out),
                     "--parts", "references", "--candidates", "flat, width 32, 2 convs, GELU + flips")
    assert done.returncode == 0, done.stderr[-2000:]
    part = json.loads(out.read_text())["parts"]["references"]
    assert part["status"] == "done"
    skipped = [r for r in part["rows"] if r["status"] == "skipped"]
    assert [r["code_size"] for r in skipped] == [384] and "5 MB file limit at 384 values" in skipped[0]["reason"]
    assert {r["code_size"] for r in part["rows"] if r["status"] == "measured"} == {64, 128, 256}
    assert part["target"]["verdict"] == "missed"  # not every code size ran
    assert "cifar10-384: skipped (no candidate of" in done.stdout


def test_a_flips_candidate_is_the_same_model_trained_on_mirrored_halves(suite):
    refs = references(suite)
    label = "flat, width 48" + refs.FLIPS
    assert refs.candidate_architecture((3, 32, 32), 64, label) == refs.candidate_architecture((3, 32, 32), 64,
                                                                                               "flat, width 48")
    recipe = refs.candidate_recipe(label, refs.GPU_RECIPE)
    assert recipe == {**refs.GPU_RECIPE, "augment": "flip_half"} and "augment" not in refs.GPU_RECIPE
    json.dumps(recipe)  # stored as is in the suite's rows and the manifest
    assert refs.fit_options(recipe)["augment"] is cu.flip_half
    assert refs.fit_options(refs.candidate_recipe("flat, width 48", refs.GPU_RECIPE)) == refs.GPU_RECIPE
