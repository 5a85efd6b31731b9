"""The course in its real client: JupyterLab served on 127.0.0.1 and driven in headless Chromium by Playwright.

What a learner does: open a chapter, look at it, run every cell through the menu. The chapter is a temporary
copy of chapter 01 (the repository's copy is never opened), run in the smoke profile. Select these tests
with `pytest -m browser`, leave them out with `-m "not browser"`. They need Debian's Chromium
(`apt-get install chromium`) and Playwright's Python package (`pip install -e ".[browser]"`; no browser
download: Playwright drives the Debian binary through `executable_path`). Without either they skip, saying
which is missing; in CI (CI=true), which installs both (.ci/run), they fail instead.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import data_policy

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parent.parent
CHAPTER = ROOT / "notebooks" / "01_convnets_as_feature_extractors.ipynb"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
RUN_TIMEOUT_S = 600  # a ceiling for a crowded machine: the chapter takes about a minute on a quiet 2-core CPU
# JupyterLab settings for the test's own (temporary) user: autosave every second, every cell kept in the page
# (no windowing, so all outputs can be inspected), no news or update checks (nothing outside 127.0.0.1).
SETTINGS = {
    "@jupyterlab/docmanager-extension:plugin": {"autosave": True, "autosaveInterval": 1},
    "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
}


def _missing_or_skip() -> str:
    """Return Debian Chromium's path; skip (in CI: fail) when it or Playwright is not installed."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    reasons = []
    if chromium is None:
        reasons.append("Chromium is not installed (sudo apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        reasons.append("Playwright is not installed (pip install -e \".[browser]\")")
    if reasons:
        message = "browser test: " + "; ".join(reasons)
        (pytest.fail if data_policy.in_ci() else pytest.skip)(message)
    return chromium


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Per code cell, in page order: whether each figure is decoded and drawn, and each progress bar's text and fill.
OUTPUTS_JS = r"""() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')].map(cell => ({
  figures: [...cell.querySelectorAll('.jp-OutputArea-output[data-mime-type="image/png"] img')]
    .map(img => img.complete && img.naturalWidth > 0 && img.naturalHeight > 0),
  bars: [...cell.querySelectorAll('.jp-OutputArea-output .widget-hprogress')]
    .map(bar => [bar.closest('.widget-hbox').innerText.replace(/\s+/g, ' ').trim(),
                 bar.querySelector('.progress-bar').style.width]),
}))"""


def _stored_outputs(path: Path) -> list[tuple[int, int]]:
    """Return (figures, widgets) stored for each code cell of a notebook: what its finished run showed."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    return [(sum("image/png" in o.get("data", {}) for o in c["outputs"]),
             sum(WIDGET_VIEW in o.get("data", {}) for o in c["outputs"])) for c in cells]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """Serve a temporary folder with JupyterLab on 127.0.0.1 (a free port, a token); yield (url, token, folder)."""
    chromium = _missing_or_skip()
    data_policy.require_dataset("fashion-mnist")
    home = tmp_path_factory.mktemp("lab")
    folder = home / "notebooks"
    folder.mkdir()
    for plugin, values in SETTINGS.items():
        package, name = plugin.split(":")
        path = home / "settings" / package / f"{name}.jupyterlab-settings"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(values))
    data_root = os.environ.get("COURSE_DATA_DIR") or str(home / "data")
    Path(data_root).mkdir(exist_ok=True)
    # The kernel inherits the server's environment: the smoke profile and the data root. MPLBACKEND (start.sh
    # test sets Agg) is dropped so that figures are drawn inline, as in a learner's JupyterLab.
    env = {k: v for k, v in os.environ.items() if k not in ("MPLBACKEND", "PYTHONPATH")}
    env.update(COURSE_PROFILE="smoke", COURSE_DATA_DIR=data_root,
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_DATA_DIR=str(home / "data-dir"),
               JUPYTER_RUNTIME_DIR=str(home / "runtime"), IPYTHONDIR=str(home / "ipython"))
    port, token = _free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={folder}",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:  # CI runs as root
        command.append("--allow-root")
    log = home / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=folder)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).close()
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not start:\n{log.read_text()[-3000:]}")
                time.sleep(0.5)
        yield {"url": url, "token": token, "folder": folder, "chromium": chromium, "log": log}
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


@pytest.fixture(scope="module")
def browser(lab):
    """Yield headless Chromium (Debian's binary) under Playwright."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=lab["chromium"])
        yield chromium
        chromium.close()


def _open(lab, browser, name: str):
    """Copy chapter 01 into the served folder as ``name``, open it in a new page, wait for an idle kernel."""
    path = lab["folder"] / name
    shutil.copyfile(CHAPTER, path)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(90_000)
    # reset: a fresh workspace, so the page shows this notebook alone (not the tabs an earlier page left open)
    page.goto(f"{lab['url']}/lab/tree/{name}?token={lab['token']}&reset")
    cells = len(json.loads(path.read_text())["cells"])
    page.wait_for_function(f"document.querySelectorAll('.jp-Notebook .jp-Cell').length === {cells}")
    assert page.locator(".jp-NotebookPanel").count() == 1, "another notebook is open in the page"
    # the status bar reads "<kernel name> | Idle" once a kernel has started and answered
    page.wait_for_function("[...document.querySelectorAll('.jp-StatusBar-TextItem')]"
                           ".some(e => / \\| Idle$/.test(e.textContent.trim()))")
    return page, path


def test_opening_and_saving_a_chapter_changes_no_byte(lab, browser):
    """What broke a learner's `git pull`: JupyterLab rewriting a notebook that was only opened."""
    stored = CHAPTER.read_bytes()
    page, path = _open(lab, browser, "opened.ipynb")
    try:
        time.sleep(3)  # three autosave intervals: an opened notebook that JupyterLab considers changed is saved now
        assert page.locator(".lm-TabBar-tab.jp-mod-dirty").count() == 0, "opening the chapter marked it modified"
        assert path.read_bytes() == stored, "an autosave after opening the chapter rewrote it"
        # An explicit save writes whatever JupyterLab holds, changed or not: the strongest form of the check.
        before = path.stat().st_mtime_ns
        page.locator(".jp-Notebook").first.click()
        page.keyboard.press("Control+s")
        deadline = time.monotonic() + 30
        while path.stat().st_mtime_ns == before:
            assert time.monotonic() < deadline, "JupyterLab did not save the notebook within 30 s"
            time.sleep(0.2)
        time.sleep(0.5)  # the contents manager writes the file in one go; let a slow disk finish
        saved = path.read_bytes()
        if saved != stored:
            import difflib
            diff = "".join(difflib.unified_diff(stored.decode().splitlines(True), saved.decode().splitlines(True),
                                                "stored", "saved by JupyterLab", n=1))
            pytest.fail(f"saving the opened chapter changed it (run benchmarks/run_notebooks.py --normalize):\n"
                        f"{diff[:4000]}")
    finally:
        page.close()
    assert CHAPTER.read_bytes() == stored  # the repository's copy was never opened


def test_running_every_cell_in_jupyterlab_shows_figures_and_finished_progress_bars(lab, browser, tmp_path):
    page, path = _open(lab, browser, "run.ipynb")
    stored = _stored_outputs(path)  # read before running: autosave rewrites the copy during the run
    try:
        page.get_by_role("menuitem", name="Run", exact=True).click()
        page.get_by_text("Run All Cells", exact=True).click()
        prompts_js = ("() => [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputPrompt')]"
                      ".map(e => e.textContent.trim())")
        started = time.monotonic()
        # the stored run's counts are on screen until the cells are queued, each then reading "[*]"
        page.wait_for_function(f"({prompts_js})().includes('[*]:')", timeout=30_000)
        while True:  # done when every code cell shows its execution count: "[*]" runs or waits, "[ ]" never ran
            prompts = page.evaluate(prompts_js)
            if prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts):
                break
            errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
            if errors.count() and "[*]:" not in prompts:  # Run All stopped at an error
                break
            if time.monotonic() - started > RUN_TIMEOUT_S:
                page.screenshot(path=str(tmp_path / "timeout.png"), full_page=True)
                pytest.fail(f"the chapter did not finish in {RUN_TIMEOUT_S} s; prompts {prompts}; "
                            f"screenshot {tmp_path / 'timeout.png'}")
            time.sleep(1)
        page.wait_for_function("[...document.querySelectorAll('.jp-StatusBar-TextItem')]"
                               ".some(e => / \\| Idle$/.test(e.textContent.trim()))")
        seconds = time.monotonic() - started

        # No error and no warning: errors and stderr (e.g. tqdm's "IProgress not found") render as stderr.
        stderr = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')
        assert stderr.count() == 0, "\n---\n".join(stderr.all_inner_texts())[:4000]
        assert prompts and all(re.fullmatch(r"\[\d+\]:", p) for p in prompts), prompts
        texts = page.locator(".jp-OutputArea-output").all_inner_texts()
        assert any("profile=smoke" in text for text in texts), "the kernel did not get COURSE_PROFILE=smoke"

        # Figures: every image decoded and drawn, and every cell whose stored run shows a figure shows one now.
        # Progress bars: tqdm's live widgets (label, bar, counts), each full and at 100%, in every cell whose
        # stored run has bars.
        shown = page.evaluate(OUTPUTS_JS)
        assert len(shown) == len(stored)
        figures = [ok for cell in shown for ok in cell["figures"]]
        bars = [bar for cell in shown for bar in cell["bars"]]
        assert figures and all(figures), f"{figures.count(False)} of {len(figures)} figures were not drawn"
        for number, (cell, (stored_figures, stored_bars)) in enumerate(zip(shown, stored), 1):
            assert len(cell["figures"]) >= min(stored_figures, 1), f"code cell {number} drew no figure"
            assert len(cell["bars"]) >= min(stored_bars, 1), f"code cell {number} showed no progress widget"
        assert bars
        for text, width in bars:
            assert width == "100%" and re.search(r"\b100%", text), f"a progress bar did not finish: {text!r} {width}"
        print(f"chapter 01 ran through JupyterLab in {seconds:.0f} s: {len(figures)} figures, {len(bars)} bars")
    finally:
        page.close()
