"""The stored notebooks: in JupyterLab's own saved form, and progress bars that show how the run ended."""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# A line that is one upper-case token, as a helper leaves where prose is still to be written (FASHION_PROSE)
re_placeholder = re.compile(r"^[A-Z][A-Z0-9]*_[A-Z0-9_]+$", re.M)


SCRIPT = load_script("benchmarks/run_notebooks.py")


@pytest.fixture(scope="module")
def run_notebooks():
    return SCRIPT


def as_jupyterlab_saves(text: str) -> str:
    """Return a notebook file as JupyterLab writes it back after opening it: parsed by JavaScript, saved by nbformat."""
    # JSON.parse has one number type, so 188.0 comes back as 188; the kernel is ipykernel's own
    nb = nbformat.from_dict(SCRIPT._ints_for_integral_floats(json.loads(text)))
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    return nbformat.writes(nb) + "\n"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_opening_and_autosaving_changes_nothing(path):
    text = path.read_text()
    assert as_jupyterlab_saves(text) == text, (
        f"{path.name} is not stored in JupyterLab's form; run benchmarks/run_notebooks.py --normalize {path}")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_stored_progress_bars_show_their_final_state(path, run_notebooks):
    nb = json.loads(path.read_text())
    widgets = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    bars = 0
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            view = output.get("data", {}).get(run_notebooks.WIDGET_VIEW)
            final = view and run_notebooks.progress_text(widgets, view["model_id"])
            if final:
                bars += 1
                assert "".join(output["data"]["text/plain"]) == final
                assert " 0%|" not in final  # every bar of a finished run moved
    code = "\n".join("".join(cell["source"]) for cell in nb["cells"] if cell["cell_type"] == "code")
    assert bars > 0 or "fit(" not in code  # a notebook that trains in its own kernel shows its progress bars


def test_the_check_catches_a_notebook_that_jupyterlab_would_rewrite(tmp_path, run_notebooks):
    """What the issue saw: a float written as 188.0 and the old kernel name; store_form repairs both."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["widgets"] = {"state": {"m": {"value": 188.0}}}
    text = nbformat.writes(nb) + "\n"
    assert as_jupyterlab_saves(text) != text
    fixed = nbformat.writes(run_notebooks.store_form(nb)) + "\n"
    assert as_jupyterlab_saves(fixed) == fixed


def test_progress_text_reads_a_tqdm_widget(run_notebooks):
    state = {"box": {"state": {"children": ["IPY_MODEL_l", "IPY_MODEL_b", "IPY_MODEL_r"]}},
             "l": {"state": {"value": "fit:\u2007100%"}}, "b": {"state": {"value": 8.0, "max": 8.0}},
             "r": {"state": {"value": "\u20078/8\u2007[00:01&lt;00:00]"}}}
    assert run_notebooks.progress_text(state, "box") == "fit: 100%|██████████| 8/8 [00:01<00:00]"
    state["b"]["state"]["value"] = 4.0
    assert "|█████     |" in run_notebooks.progress_text(state, "box")
    assert run_notebooks.progress_text(state, "l") is None  # not a bar


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_chapter_is_a_complete_laptop_run_listed_in_the_readme(path):
    """Each notebook: executed top to bottom in the laptop profile, no error stored, no unfilled text, in the README."""
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c["execution_count"] for c in code if c.get("execution_count") is not None]
    assert counts == list(range(1, len(counts) + 1)) and len(counts) >= len(code) - 1, \
        f"{path.name}: not executed top to bottom in one run (execution counts {counts[:5]}...)"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"], f"{path.name}: an error is stored"
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert figures, f"{path.name}: no figure stored (stored with MPLBACKEND=Agg? run_notebooks.py --write unsets it)"
    printed = "".join("".join(o.get("text", "")) for o in outputs)
    assert "profile=laptop" in printed, f"{path.name}: not stored from the laptop profile"
    prose = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
    assert not re_placeholder.findall(prose), f"{path.name}: unfilled placeholders {re_placeholder.findall(prose)}"
    readme = (ROOT / "README.md").read_text()
    assert f"(notebooks/{path.name})" in readme, f"{path.name} is missing from the README's chapter table"
    assert f"blob/main/notebooks/{path.name})" in readme, f"{path.name} has no Colab badge in the README"



MAX_WORDS_PER_CELL = 300  # one point per markdown cell; CONTRIBUTING asks for about 250
MAX_OUTPUT_LINE = 150  # characters: a stored output a learner can read without scrolling sideways


def reading_problems(nb: dict) -> list[str]:
    """Return the markdown cells longer than MAX_WORDS_PER_CELL words and the output lines wider than MAX_OUTPUT_LINE."""
    problems = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "markdown":
            words = len("".join(cell["source"]).split())
            if words > MAX_WORDS_PER_CELL:
                problems.append(f"cell {index}: {words} words of markdown (at most {MAX_WORDS_PER_CELL}: split it "
                                f"where the point changes)")
            continue
        for output in cell.get("outputs", []):
            text = "".join(output.get("text", "")) + "".join(output.get("data", {}).get("text/plain", ""))
            wide = [line for line in text.splitlines() if len(line) > MAX_OUTPUT_LINE]
            if wide:
                problems.append(f"cell {index}: an output line of {len(wide[0])} characters ({wide[0][:60]!r}...; "
                                f"at most {MAX_OUTPUT_LINE}: print fewer columns or wrap it)")
    return problems


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_markdown_cells_are_short_and_outputs_fit_the_screen(path):
    problems = reading_problems(json.loads(path.read_text()))
    assert not problems, f"{path.name}:\n" + "\n".join(problems)


def test_the_reading_check_catches_a_wall_of_text_and_a_wide_table():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("word " * 301), nbformat.v4.new_markdown_cell("word " * 300),
                nbformat.v4.new_code_cell("print(table)", outputs=[
                    nbformat.v4.new_output("stream", name="stdout", text="x" * 151 + "\nshort\n"),
                    nbformat.v4.new_output("execute_result", data={"text/plain": "y" * 150})])]
    problems = reading_problems(json.loads(nbformat.writes(nb)))
    assert [p.split(":")[0] for p in problems] == ["cell 0", "cell 2"]
    assert "301 words" in problems[0] and "151 characters" in problems[1]


SIZE_ARITHMETIC = re.compile(r"profile\.(train|test)_images\s*(//|[-+*/%])|(//|[-+*/%])\s*profile\.(train|test)_images")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_notebook_computes_with_a_size_the_gpu_profile_leaves_open(path):
    # The gpu profile takes whole training splits: its train_images is None, and `None // 6` stops a GPU learner's
    # chapter (09 did). Sizes are asked for with profile.take(n) or guarded with `(profile.train_images or n)`.
    offending = [line.strip() for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"
                 for line in cell.source.splitlines() if SIZE_ARITHMETIC.search(line)]
    assert not offending, offending
