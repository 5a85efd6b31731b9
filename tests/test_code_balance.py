"""tools/code_balance.py: what learners read against what they run, counted the same way every time."""
from __future__ import annotations

import json

from conftest import load_script

TOOL = load_script("tools/code_balance.py")


def test_counts_split_the_package_into_generated_and_hidden_lines():
    counts = TOOL.balance()
    assert counts["package lines"] == (counts["package lines generated from notebooks"]
                                       + counts["package lines in exercises"] + counts["package lines not shown"])
    assert counts["package lines in exercises"] > 0
    saved = sum(c["saved lines"] for c in counts["chapters"].values())
    assert 0 < saved <= counts["package lines generated from notebooks"]  # a generated module adds a header
    assert all(c["saved lines"] < c["notebook lines"] for c in counts["chapters"].values())


def test_a_notebooks_code_saved_code_and_definitions_are_counted(tmp_path):
    nb = {"cells": [{"cell_type": "code", "source": ["#@save\n", "def f(x):\n", "\n", "    return x\n"]},
                    {"cell_type": "code", "source": ["%pip install x\n", "class A:\n", "    pass\n"]},
                    {"cell_type": "markdown", "source": ["def not_code(): pass\n"]}]}
    path = tmp_path / "99_x.ipynb"
    path.write_text(json.dumps(nb))
    assert TOOL.notebook_code(path) == (6, 2, 2)  # 6 non-blank code lines, 2 saved (without #@save), f and A
