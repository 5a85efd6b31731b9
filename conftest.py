"""Test-run policy for datasets: skip (or, in CI, fail) with one reason that names the remedies.

Unit tests and notebooks that need a dataset ask `require_dataset`; notebooks are checked here
before they run, by the datasets their code loads. Without a local copy and without network a
test is skipped with one reason; a line at the end counts them. With CI=true a missing dataset
fails instead: CI has the data, so a skip there would hide a broken setup.
"""
from __future__ import annotations

import functools
import json
import os
import re
import socket
from pathlib import Path

import pytest

NO_DATA = "no dataset"
# Where torchvision downloads each dataset from (checked only when there is no local copy).
DOWNLOAD_HOSTS = {"fashion-mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                  "cifar10": "www.cs.toronto.edu", "stl10": "ai.stanford.edu",
                  "flowers102": "www.robots.ox.ac.uk"}


def in_ci() -> bool:
    """Return True inside CI, where every dataset must be present."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@functools.lru_cache(maxsize=None)
def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


@functools.lru_cache(maxsize=None)
def missing_dataset_reason(name: str, split: str = "test") -> str | None:
    """Return why ``name`` cannot be loaded here (no local copy, no network), or None when it can."""
    from course_utils import data

    if data.local_copy(name, split) is not None or _reachable(DOWNLOAD_HOSTS[name]):
        return None
    debian = "sudo apt-get install dataset-fashion-mnist; " if name == "fashion-mnist" else ""
    return (f"{NO_DATA}: {name}/{split} has no local copy and cannot be downloaded here. Remedies: "
            f"a pack in $COURSE_DATA_DIR/{name}/{split}.npz; {debian}or a network connection once.")


def require_dataset(name: str, split: str = "test") -> None:
    """Skip the calling test when ``name`` cannot be loaded here (fail instead in CI)."""
    reason = missing_dataset_reason(name, split)
    if reason is not None:
        (pytest.fail if in_ci() else pytest.skip)(reason)


def _datasets_in_notebook(path: Path) -> set[str]:
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    return set(re.findall(r"load_dataset\(\s*[\"']([\w-]+)[\"']", code))


def pytest_collection_modifyitems(config, items):
    """Skip every cell of a notebook whose datasets cannot be loaded here (not in CI: there it must fail)."""
    if in_ci():
        return
    reasons: dict[Path, str | None] = {}
    for item in items:
        path = Path(str(item.fspath))
        if path.suffix != ".ipynb":
            continue
        if path not in reasons:
            missing = [missing_dataset_reason(name) for name in sorted(_datasets_in_notebook(path))]
            reasons[path] = next((r for r in missing if r), None)
        if reasons[path]:
            item.add_marker(pytest.mark.skip(reason=reasons[path]))


def pytest_terminal_summary(terminalreporter):
    """Count the tests skipped for lack of data, so 'no data here' never looks like 'all passed'."""
    skipped = terminalreporter.stats.get("skipped", [])
    no_data = [r for r in skipped if NO_DATA in str(getattr(r, "longrepr", ""))]
    if no_data:
        terminalreporter.write_line(
            f"{len(no_data)} test(s) skipped for lack of data (no local copy, no network): see "
            "docs/troubleshooting.md row 3 for the three remedies; CI (CI=true) fails on this instead.",
            yellow=True)
