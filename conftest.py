"""Run-wide test policy: notebooks whose datasets are missing are skipped (failed in CI), and such skips are counted.

The rule itself lives in tests/data_policy.py, shared with the unit tests' fixtures.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

pytest_plugins = ("pytester",)  # tests/test_data_policy.py runs small pytest sessions

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))
from data_policy import NO_DATA, in_ci, missing_dataset_reason  # noqa: E402


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
            missing = [missing_dataset_reason(name, split) for name in sorted(_datasets_in_notebook(path))
                       for split in ("train", "test")]
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
