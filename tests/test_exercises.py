"""Every exercise checks itself: its solution passes, each typical wrong answer is rejected with its hint, a stub is
'not attempted yet', and every notebook's check cells name exercises that exist."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import course_utils as cu
from course_utils import exercises

exercises._find("01.1")  # imports every chapter's exercises
KEYS = sorted(exercises.EXERCISES)
NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.parametrize("key", KEYS)
def test_the_solution_passes_its_check(key, capsys):
    assert exercises.answer_problem(key, exercises.EXERCISES[key].solution) is None
    assert cu.check_answer(key, exercises.EXERCISES[key].solution) is None  # prints, returns nothing to display
    assert capsys.readouterr().out.strip().endswith("correct.")


@pytest.mark.parametrize("key", KEYS)
def test_every_typical_wrong_answer_is_rejected_with_the_hint(key, capsys):
    ex = exercises.EXERCISES[key]
    assert ex.wrong, f"exercise {key} lists no typical wrong answer to prove its check"
    for wrong in ex.wrong:
        cu.check_answer(key, wrong)
        out = capsys.readouterr().out
        assert "not yet: " in out and ex.hint in out and f"cu.show_solution('{key}')" in out


@pytest.mark.parametrize("key", KEYS)
def test_an_unattempted_exercise_says_so_without_raising(key, capsys):
    def stub(*args, **kwargs):
        raise NotImplementedError("fill me in")

    for answer in (None, stub) if callable(exercises.EXERCISES[key].solution) else (None,):
        cu.check_answer(key, answer)
        out = capsys.readouterr().out
        assert "not attempted yet" in out and "Hint" not in out  # the hint comes with a first attempt


def test_code_that_fails_is_reported_not_raised(capsys):
    cu.check_answer("01.1", lambda n, k, s, p: n / 0)
    assert "your code raised ZeroDivisionError" in capsys.readouterr().out


def test_a_solution_can_be_shown_and_an_unknown_exercise_is_a_clear_error(capsys):
    cu.show_solution("01.3")
    assert "class PoolingEncoder(nn.Module)" in capsys.readouterr().out
    cu.show_solution("01.2")
    assert capsys.readouterr().out.strip() == "01.2: 9649"
    with pytest.raises(cu.CourseError, match=r"no exercise '01.9'; the exercises are 01.1, 01.2"):
        cu.check_answer("01.9", 1)


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebooks_check_cells_name_its_own_exercises(notebook):
    cells = json.loads(notebook.read_text())["cells"]
    keys = re.findall(r'cu\.check_answer\("(\d\d\.\d)"', "".join("".join(c["source"]) for c in cells))
    assert len(keys) == len(set(keys)) and all(k in exercises.EXERCISES and k[:2] == notebook.name[:2] for k in keys)
    chapter = [k for k in KEYS if k[:2] == notebook.name[:2]]
    assert sorted(keys) == chapter  # every exercise of the chapter has its check cell in the notebook
    if keys:
        assert 3 <= len(keys) <= 5
