"""The benchmark scripts: what they share, and each one run end to end in a seconds-long mode."""
from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import course_utils as cu

from conftest import CIFAR_DIR, load_script, needs_cifar, needs_fashion

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py"))


@pytest.fixture(scope="module")
def common():
    """Return benchmarks/_common.py as a module (the scripts import it as their sibling)."""
    return load_script("benchmarks/_common.py")


def run_script(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run a benchmark script as the README says (python benchmarks/<script>), never redoing a measurement."""
    # A busy test machine must not make the run wait and redo; one thread, because OpenMP threads that
    # spin-wait on oversubscribed cores make a tiny run several times slower without testing anything more.
    env = {**os.environ, "BENCH_MAX_OTHERS": "1", "OMP_NUM_THREADS": "1"}
    if CIFAR_DIR is not None:
        env.setdefault("COURSE_DATA_DIR", str(CIFAR_DIR))  # where the tests found the CIFAR-10 pack
    return subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def number(text: str) -> float:
    """Return a table cell such as '1,234' as a number."""
    return float(text.replace(",", ""))


def expected_verdict(shown_ratio: float, target: float, shown_step: float) -> set[str]:
    """Return the verdicts consistent with a ratio rounded to ``shown_step`` (both at the target's edge)."""
    if shown_ratio > target + shown_step / 2:
        return {"met"}
    if shown_ratio < target - shown_step / 2:
        return {"missed"}
    return {"met", "missed"}


# --------------------------------------------------------------------------- the shared module
@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_import_no_sibling_but_the_shared_module(script):
    tree = ast.parse((BENCH / script).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    siblings = {Path(s).stem for s in SCRIPTS} - {Path(script).stem}
    # gpu_suite.py trains the references exactly as train_references.py defines them (REFERENCES, RECIPE), and
    # train_vae_references.py shares its splits and manifest writing
    reuses_references = script in ("gpu_suite.py", "train_vae_references.py")
    assert imported & siblings <= {"_common", "run_notebooks"} | ({"train_references"} if reuses_references else set())
    touches_path = [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Attribute) and node.attr == "path"
                    and isinstance(node.value, ast.Name) and node.value.id == "sys"]
    assert touches_path == []  # benchmarks/ is on the path when a script runs; course_utils is installed


def test_md_table_aligns_numbers_right_and_escapes_pipes(common):
    assert common.md_table([{"model": "a|b", "images/s": "1,234"}]) == (
        "| model | images/s |\n|---|---:|\n| a\\|b | 1,234 |")


def test_readme_section_is_replaced_in_place_and_other_sections_are_kept(common, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Benchmarks\n\n## A\n\nold a\n\n## B\n\nkeep b\n")
    common.write_readme_section("A", "new a", readme)
    common.write_readme_section("C", "new c", readme)
    text = readme.read_text()
    assert "old a" not in text and "new a" in text and "keep b" in text
    assert text.index("## A") < text.index("## B") < text.index("## C")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no temporary file left


def test_disturbed_measurements_are_redone_and_reported(common, monkeypatch):
    shares = iter([0.5, 0.04])
    monkeypatch.setattr(common, "others_share", lambda fn, *a, **k: (fn(*a, **k), next(shares)))
    calls = []
    check = common.Interference(threshold=0.1, tries=3, wait=0)
    assert check.quiet(lambda x: calls.append(x) or x * 2, 21) == 42
    assert calls == [21, 21] and check.shares == [0.04]  # the disturbed run was redone, only the kept one counts
    assert "4% of the CPU" in check.note() and "more than 10%" in check.note()
    assert common.Interference(threshold=1).note() == ""


def test_others_share_is_a_fraction_of_the_machine_even_for_a_blink(common):
    result, share = common.others_share(lambda: 42)  # far shorter than a clock tick
    assert result == 42 and (share is None or 0.0 <= share <= 1.0)


def test_machine_line_names_the_cpu_threads_torch_blas_and_bf16(common):
    line = common.machine_line()
    assert line.startswith(cu.cpu_name()) and f"torch {torch.__version__}" in line
    assert f"{torch.get_num_threads()} torch threads" in line and f"BLAS {common.blas_name()}" in line
    assert f"native bf16 {'yes' if cu.cpu_has_native_bf16() else 'no'}" in line
    assert "load average" in common.machine_line(stamp=True) and "load average" not in line


def test_fit_auto_settings_are_what_train_step_chooses(common):
    chosen = cu.TrainStep(torch.nn.Conv2d(1, 1, 1), device="cpu", optimizer="adam").settings
    assert common.fit_auto_settings("cpu", "adam") == {k: chosen[k] for k in ("amp", "channels_last", "fused")}
    assert common.describe_settings({"amp": None, "channels_last": False, "fused": False}) == \
        "float32, NCHW, unfused optimizer"
    assert common.verdict(2.0, 2.0) == "met" and common.verdict(1.999, 2.0) == "missed"


@needs_fashion
def test_fit_throughput_reports_fits_own_epochs_after_the_warm_up(common, fashion_test):
    t = common.fit_throughput(cu.KapilshAutoencoder(), fashion_test.subset(256), 64, 2, device="cpu")
    assert len(t.rates) == 2 and t.batch_size == 64 and t.images_per_second > 0
    assert len(t.losses) == 3 * 256 // 64 and t.images == pytest.approx(2 * 256, rel=0.01)


# --------------------------------------------------------------------------- each script, tiny
@pytest.fixture
def readme(tmp_path):
    """Return a README to write into, with a section the scripts must leave alone; check the real one stays."""
    path = tmp_path / "README.md"
    path.write_text("# Benchmarks\n\n## Other\n\nkept\n")
    real = (BENCH / "README.md").read_bytes()
    yield path
    assert (BENCH / "README.md").read_bytes() == real  # --readme-path writes only there
    assert "## Other\n\nkept\n" in path.read_text()


@needs_cifar
def test_speed_benchmark_tiny_writes_its_tables_and_a_verdict_computed_from_them(readme, common):
    done = run_script("bench_speed.py", "--tiny", "--readme-path", str(readme))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    section = readme.read_text().split("## Training speed", 1)[1]
    assert "| replica | data | seed batch | seed loop |" in section
    row = re.search(r"^\| Paperspace \| cifar10 \| 64 \| ([\d,]+) \| \d+% \| ([\d,]+) \| ([\d,]+) \| \*\*([\d.]+)x\*\*",
                    section, re.M)
    assert row, section[:3000]
    seed, fit, shown = number(row[1]), number(row[2]), float(row[4])
    assert shown == pytest.approx(fit / seed, rel=0.02, abs=0.01)
    target = re.search(r"\*\*Target\*\* \(Paperspace replica at the article's batch 64: .*?\*\*(met|missed)\*\* in "
                        r"this run, ([\d.]+)x \(([\d,]+) vs ([\d,]+) images/s\)", section)
    assert target, section[:3000]
    assert float(target[2]) == shown and (number(target[3]), number(target[4])) == (fit, seed)
    assert target[1] in expected_verdict(shown, 2.0, 0.01)
    auto = common.describe_settings(common.fit_auto_settings("cpu", "adam"))
    assert f"defaults, which chose {auto} here" in section
    assert "| setting (one change from float32, NCHW, unfused) | recommended |" in section
    assert "| float32, NCHW, unfused (baseline), batch 32 | " in section and "(1.00x) |" in section
    assert f"| fit's defaults (auto: {common.describe_settings(common.fit_auto_settings('cpu'))}) | " in section


@needs_cifar
def test_efficiency_benchmark_tiny_writes_its_tables_and_a_verdict_computed_from_them(readme, common):
    done = run_script("bench_efficiency.py", "--tiny", "--readme-path", str(readme))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    section = readme.read_text().split("## Compute efficiency", 1)[1]
    auto = common.describe_settings(common.fit_auto_settings("cpu"))
    assert "| cu.fit, float32, NCHW, unfused (amp=False, channels_last=False, fused=False) | 32 | " in section
    row = re.search(rf"^\| \*\*cu\.fit, its defaults\*\* \(auto: {re.escape(auto)}\) \| 32 \| ([\d,]+) \| [\d.]+x "
                    r"\| (\d+) \| \*\*(\d+)%\*\*", section, re.M)
    assert row, section[:3000]
    target = re.search(r"\*\*Target\*\* .*?at least 70% of the float32 matmul rate\): \*\*(met|missed)\*\* in this "
                       r"run, (\d+)%", section)
    assert target, section[:3000]
    assert target[2] == row[3]
    assert target[1] in expected_verdict(int(target[2]), 70, 1)
    for table in ("| category (self CPU time per step) |", "| layer | type | input (C x H x W) |",
                  "| op (float32, NCHW, unfused) |"):
        assert table in section
    assert f"BLAS library of this torch build ({common.blas_name()})" in section


# --------------------------------------------------------------------------- quality benchmark
@needs_fashion
def test_quality_benchmark_runs_end_to_end_and_records_every_run(tmp_path):
    out = tmp_path / "q.jsonl"
    cmd = [sys.executable, str(BENCH / "bench_quality.py"), "--dataset", "fashion-mnist",
           "--candidates", "recommended-spatial", "kapilsh", "--train-images", "256", "--test-images", "256",
           "--epochs", "1", "--pca", "--json", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    names = {r["candidate"] for r in records}
    assert {"recommended-spatial", "kapilsh", "PCA (full train)", "PCA (256 train)"} <= names
    pca = next(r for r in records if r["candidate"] == "PCA (full train)")
    assert pca["code_size"] == 196 and 0.003 < pca["mse"] < 0.005  # PCA-196 as the course measured it: 0.00389
    assert all(r["score_images"] == 256 and r["scored_on"] == "test" and r["code_size"] == 196
               for r in records if "parameters" in r)
    report = subprocess.run(cmd[:2] + ["--dataset", "fashion-mnist", "--report", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and "| recommended-spatial | 196 |" in report.stdout


@needs_fashion
def test_quality_benchmark_tunes_on_the_validation_split_and_marks_each_row(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))  # the script's own `from _common import ...`
    bench = load_script("benchmarks/bench_quality.py")
    full, train, val = bench.load("fashion-mnist", 512, None, seed=0, score_on="validation")
    held_out, _ = cu.validation_split(cu.load_dataset("fashion-mnist", "train"))
    assert len(val) == 5000 and len(full) == 55000 and len(held_out) == 55000  # 5,000 held out of 60,000
    never_trained = {bytes(x.numpy()) for x in val.images[:200]}
    assert not never_trained & {bytes(x.numpy()) for x in train.images}  # no scoring image is trained on
    assert all(row[3] in bench.CANDIDATES for row in bench.TUNING_GRID)
    out = tmp_path / "tuning.jsonl"
    done = run_script("bench_quality.py", "--tuning-grid", "--grid-rows", "3", "--train-images", "256",
                      "--test-images", "128", "--epochs", "1", "--json", str(out), timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    (record,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert record["scored_on"] == "validation" and record["score_images"] == 128 and record["grid_row"] == 3
    assert "--score-on validation" in record["command"] and "validation MSE" in done.stdout


@needs_fashion
def test_quality_benchmark_long_run_resumes_from_its_checkpoint(tmp_path):
    out, checkpoint = tmp_path / "long.jsonl", tmp_path / "long.pt"
    cmd = ["bench_quality.py", "--dataset", "fashion-mnist", "--candidates", "kapilsh", "--latents", "196",
           "--seeds", "0", "--train-images", "256", "--test-images", "128", "--epochs", "2", "--chunk-epochs", "1",
           "--checkpoint", str(checkpoint), "--json", str(out)]
    for _ in range(3):  # the third run finds both epochs done
        done = run_script(*cmd, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["epochs_done"] for r in records] == [1, 2]
    assert "has finished all 2 epochs" in done.stdout
    assert cu.load_checkpoint(checkpoint)["epoch"] == 2


# --------------------------------------------------------------------------- course run-time benchmark
def _notebook(path: Path, *sources: str) -> Path:
    import nbformat
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)
    return path


def test_course_runtime_benchmark_times_notebooks_in_the_profile_and_flags_failures(tmp_path):
    good = _notebook(tmp_path / "01_good.ipynb", "import os",
                     "assert os.environ['COURSE_PROFILE'] == 'laptop'  # the profile reaches the kernel",
                     "import time; time.sleep(0.5)")
    bad = _notebook(tmp_path / "02_bad.ipynb", "raise ValueError('broken chapter')")
    before = good.read_bytes()
    out = tmp_path / "runtime.json"
    cmd = [sys.executable, str(BENCH / "bench_course_runtime.py"), "--profile", "laptop",
           "--json", str(out), str(good)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    (record,) = result["records"]
    assert record["error"] is None and record["profile"] == "laptop" and result["missed"] == []
    assert record["slowest_cell_seconds"] >= 0.5 and "time.sleep" in record["slowest_cell"]
    assert good.read_bytes() == before  # outputs are not written
    assert "| 01_good.ipynb | " in done.stdout and "| **all 1** | " in done.stdout
    failed = subprocess.run(cmd[:-1] + [str(bad)], capture_output=True, text=True, timeout=300)
    missed = json.loads(out.read_text())["missed"]
    assert failed.returncode == 1 and missed == ["02_bad.ipynb failed: ValueError in cell [0]: broken chapter"]


def test_bench_precision_report_computes_its_verdict(tmp_path):
    """The precision report: the relative change per recipe and a verdict that follows the numbers."""
    def row(case, seed, amp, val):
        return json.dumps({"case": case, "seed": seed, "amp": amp, "val_mse": val, "test_mse": val})
    rows = [row("a", 0, "float32", 0.0100), row("a", 0, "bf16", 0.0101), row("a", 1, "float32", 0.0102),
            row("a", 1, "bf16", 0.0103)]
    small = tmp_path / "small.jsonl"
    small.write_text("\n".join(rows) + "\n")
    out = run_script("bench_precision.py", "--report", str(small)).stdout
    assert re.search(r"\| a \| 2 \| 0\.01010 \| 0\.01020 \| \+0\.99% \|", out)
    assert "changing the seed moved float32 validation MSE by 2.00%" in out and "bf16 stays the default" in out
    big = tmp_path / "big.jsonl"
    big.write_text("\n".join(rows[:1] + [row("a", 0, "bf16", 0.0110)]) + "\n")
    out = run_script("bench_precision.py", "--report", str(big)).stdout
    assert "+10.00%" in out and "make float32 the default" in out


@needs_cifar
@needs_fashion
def test_small_data_is_the_same_real_images_in_every_dataset_the_chapters_read(tmp_path):
    script = load_script("benchmarks/run_notebooks.py")
    files = script.write_small_data(tmp_path, 120)
    assert {f.relative_to(tmp_path).as_posix() for f in files} == {
        f"{name}/{split}.npz" for name in script.SMALL_DATASETS for split in ("train", "test")}
    for name in script.SMALL_DATASETS:
        for split, n in (("train", 120), ("test", 40)):
            small = cu.read_pack(cu.data.pack_path(name, split, tmp_path))
            whole = cu.load_dataset(name, split).subset(n)
            assert torch.equal(small.images, whole.images) and small.classes == whole.classes


def test_small_data_runs_are_never_stored():
    done = run_script("run_notebooks.py", "--small-data", "100", "--write", "notebooks/01_x.ipynb")
    assert done.returncode == 2 and "leave out --write" in done.stderr
