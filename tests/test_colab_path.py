"""The Colab path: the course package built and installed (not editable) into a fresh environment, then a chapter
run from a folder outside the repository, as Colab's setup cell and a learner's own Jupyter do.

The environment is a fresh `python -m venv` that reuses the already installed PyTorch and the rest through a .pth
file naming the test run's own site-packages (.venv's; a .pth line adds the folder to sys.path without processing
the .pth files inside it, so the editable install of the repository's course_utils stays invisible). That keeps
CI from downloading two gigabytes again; `--system-site-packages` would not do, since it exposes the base
interpreter's packages, not this virtual environment's. The kernel must then import nothing from the repository:
course_utils from the new environment, every other module from the new environment, the standard library or
the reused site-packages. Select with `pytest -m colab`.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import site
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import matplotlib
import nbformat
import pytest

import data_policy

pytestmark = pytest.mark.colab

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "notebooks" / "01_convnets_as_feature_extractors.ipynb"
REPORT = "COLAB-PATH-REPORT "
# Appended to the temporary copy of the chapter: what the kernel imported and where, as one JSON line.
REPORT_CELL = f"""\
import json, os, sys
import course_utils
print({REPORT!r} + json.dumps({{
    "course_utils": os.path.realpath(course_utils.__file__),
    "prefix": os.path.realpath(sys.prefix),
    "cwd": os.path.realpath(os.getcwd()),
    "sys_path": [os.path.realpath(p or os.getcwd()) for p in sys.path],
    "modules": {{name: os.path.realpath(m.__file__) for name, m in list(sys.modules.items())
                if isinstance(getattr(m, "__file__", None), str)}},
    "data_root": os.path.realpath(course_utils.data.data_root()),
}}))
"""


def _run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(command, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, (f"{' '.join(map(str, command))} failed:\n"
                                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def _inside(path: str | Path, folder: Path) -> bool:
    return Path(path).is_relative_to(folder)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """Build a wheel from the working tree and install it into a fresh virtual environment; return its paths."""
    data_policy.require_dataset("fashion-mnist")
    home = tmp_path_factory.mktemp("colab").resolve()
    assert not _inside(home, ROOT), "the temporary folder must be outside the repository"
    # What pip builds from a git URL: the project files, copied so that the build leaves nothing in the repository.
    source = home / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "course_utils", source / "course_utils", ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    # No build isolation: setuptools is already here, so the build needs no download (pip from git isolates it).
    _run(pip + ["wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(home / "dist"),
                str(source)])
    wheel = next((home / "dist").glob("course_utils-*.whl"))

    env = home / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(env)])
    python = env / "bin" / "python"
    purelib = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
                   .stdout.strip()).resolve()
    reused = [Path(p).resolve() for p in site.getsitepackages() + [sysconfig.get_path("purelib")]]
    reused = sorted(set(p for p in reused if p.is_dir()))
    (purelib / "reuse_installed_packages.pth").write_text("".join(f"{p}\n" for p in reused))
    # Not --no-deps: pip resolves the wheel's dependencies against what the environment sees, offline, so a
    # dependency missing from the reused packages fails here instead of in a notebook.
    _run(pip + ["--python", str(python), "install", "-q", "--no-index", str(wheel)])
    return {"home": home, "python": python, "purelib": purelib, "reused": reused}


def _run_chapter(installed: dict, folder: Path, data_dir: Path | None) -> tuple[dict, list, list]:
    """Run a copy of chapter 01 in ``folder`` with the new environment's kernel.

    Return the kernel's report and each code cell's outputs, as stored and as run.
    """
    folder.mkdir()
    nb = nbformat.read(CHAPTER, as_version=4)
    stored = [cell.outputs for cell in nb.cells if cell.cell_type == "code"]
    nb.cells.append(nbformat.v4.new_code_cell(REPORT_CELL))
    path = folder / CHAPTER.name
    nbformat.write(nb, path)
    home = installed["home"]
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "MPLBACKEND", "COURSE_DATA_DIR", "VIRTUAL_ENV")}
    # Each run has its own empty user cache (XDG_CACHE_HOME), as on a fresh machine: packs are read from the data
    # root or the cache, so an earlier run's cache would hide where this one writes. matplotlib keeps its own font
    # cache (no rebuild, no stderr).
    env.update(COURSE_PROFILE="smoke", XDG_CACHE_HOME=str(home / f"{folder.name}-cache"),
               MPLCONFIGDIR=matplotlib.get_cachedir(),
               JUPYTER_DATA_DIR=str(home / "jupyter"),
               JUPYTER_CONFIG_DIR=str(home / "jupyter-config"), IPYTHONDIR=str(home / "ipython"),
               PATH=f"{installed['python'].parent}{os.pathsep}{env.get('PATH', '')}")
    if data_dir is not None:
        env["COURSE_DATA_DIR"] = str(data_dir)
    # nbconvert started by the new environment's python: the kernel ("python3") is that same interpreter
    started, cpu = time.monotonic(), resource.getrusage(resource.RUSAGE_CHILDREN)
    _run([str(installed["python"]), "-m", "nbconvert", "--to", "notebook", "--execute", "--inplace",
          "--ExecutePreprocessor.timeout=600", str(path)], cwd=folder, env=env)
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(f"chapter 01 from the wheel, {folder.name}: {time.monotonic() - started:.0f} s, "
          f"{used.ru_utime + used.ru_stime - cpu.ru_utime - cpu.ru_stime:.0f} CPU s")
    executed = nbformat.read(path, as_version=4)
    text = "".join(o.get("text", "") for o in executed.cells[-1].outputs if o.get("name") == "stdout")
    line = next(line for line in text.splitlines() if line.startswith(REPORT))
    return json.loads(line[len(REPORT):]), stored, [c.outputs for c in executed.cells[:-1] if c.cell_type == "code"]


def _assert_nothing_from_the_repository(report: dict, installed: dict, folder: Path) -> None:
    assert _inside(report["course_utils"], installed["purelib"]), report["course_utils"]
    assert Path(report["prefix"]) == installed["python"].parent.parent.resolve(), report["prefix"]
    assert Path(report["cwd"]) == folder.resolve()

    def allowed(path: str) -> bool:
        return not _inside(path, ROOT) or any(_inside(path, reused) for reused in installed["reused"])

    assert [p for p in report["sys_path"] if not allowed(p)] == []
    from_repository = {name: path for name, path in report["modules"].items() if not allowed(path)}
    assert from_repository == {}, f"modules imported from the repository: {from_repository}"
    course = {name: path for name, path in report["modules"].items()
              if name.split(".")[0] == "course_utils" and not _inside(path, installed["purelib"])}
    assert course == {}, f"course_utils modules from outside the installed wheel: {course}"
    assert not [name for name in report["modules"] if "__editable__" in name], "the editable install was loaded"


def _figures(outputs: list) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def _assert_a_clean_run(stored: list, run: list) -> None:
    """No error or warning output; inline figures wherever the stored run has them, as on Colab."""
    assert len(run) == len(stored)
    problems = [o for cell in run for o in cell if o["output_type"] == "error" or o.get("name") == "stderr"]
    assert problems == []
    for number, (before, now) in enumerate(zip(stored, run), 1):
        assert _figures(now) >= min(_figures(before), 1), f"code cell {number} drew no figure"
    assert sum(map(_figures, run)) > 0


def test_a_chapter_runs_from_the_installed_wheel_outside_the_repository(installed):
    repository_data = sorted((ROOT / "data").rglob("*")) if (ROOT / "data").is_dir() else []

    # 1. No data root set: packs go to the user cache (Colab: /content/course_data), never to a repository.
    folder = installed["home"] / "unset"
    report, stored, run = _run_chapter(installed, folder, data_dir=None)
    _assert_nothing_from_the_repository(report, installed, folder)
    cache = (installed["home"] / "unset-cache" / "course_utils").resolve()
    assert Path(report["data_root"]) == cache
    assert sorted(p.name for p in (cache / "fashion-mnist").glob("*.npz")) == ["test.npz", "train.npz"]
    _assert_a_clean_run(stored, run)

    # 2. COURSE_DATA_DIR set (an instructor's shared folder): packs go there.
    shared = installed["home"] / "shared-data"
    shared.mkdir()
    folder = installed["home"] / "set"
    report, stored, run = _run_chapter(installed, folder, data_dir=shared)
    _assert_nothing_from_the_repository(report, installed, folder)
    assert Path(report["data_root"]) == shared.resolve()
    assert sorted(p.name for p in (shared / "fashion-mnist").glob("*.npz")) == ["test.npz", "train.npz"]
    assert not list((installed["home"] / "set-cache").rglob("*.npz"))
    _assert_a_clean_run(stored, run)

    assert (sorted((ROOT / "data").rglob("*")) if (ROOT / "data").is_dir() else []) == repository_data


def test_the_check_sees_a_module_imported_from_the_repository(installed, tmp_path):
    """The import check is not vacuous: the repository's own course_utils on sys.path is reported."""
    folder = tmp_path / "here"
    report = {"course_utils": str(ROOT / "course_utils" / "__init__.py"), "prefix": str(sys.prefix),
              "cwd": str(folder), "sys_path": [str(ROOT)], "modules": {"course_utils": str(ROOT / "course_utils")},
              "data_root": str(ROOT / "data")}
    with pytest.raises(AssertionError):
        _assert_nothing_from_the_repository(report, installed, folder)
    installed_report = dict(report, course_utils=str(installed["purelib"] / "course_utils" / "__init__.py"),
                            prefix=str(installed["python"].parent.parent), sys_path=[str(folder)],
                            modules={"course_utils.data": str(ROOT / "course_utils" / "data.py")})
    with pytest.raises(AssertionError, match="from the repository"):
        _assert_nothing_from_the_repository(installed_report, installed, folder)
