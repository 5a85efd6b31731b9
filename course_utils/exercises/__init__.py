"""Exercises that check themselves, without a grading server (Colab and JupyterLab alike).

Each exercise has a fill-in cell, where the learner writes a function, a class or a number (the
cell starts as a stub that raises ``NotImplementedError`` or holds ``None``), and a check cell:

    cu.check_answer("01.1", conv_output_side)

The check prints one line (and returns nothing, so a cell shows only that line): correct; or what
differs (a shape, a value beyond a stated tolerance, a parameter count) with a hint; or "not
attempted yet", so a notebook run before any exercise is written goes on without an error;
`answer_problem` returns the same verdict to code. ``cu.show_solution("01.1")`` prints the reference solution.
The pattern is Neuromatch Academy's stubs that raise until filled, with CS231n's and Karpathy's
tolerance checks. Each chapter's exercises, with their checks, solutions and typical wrong answers,
live in ``course_utils/exercises/chNN.py``; ``tests/test_exercises.py`` runs every solution (it must
pass) and every wrong answer (it must be rejected with its hint).
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from collections.abc import Callable
from typing import Any

from ..errors import CourseError


class NotAttempted(Exception):
    """Raised by a check when the answer is still the stub (None, or code that raises NotImplementedError)."""


@dataclasses.dataclass
class Exercise:
    """One exercise: how to check an answer, a hint, the reference solution and typical wrong answers."""

    key: str  # "01.1": chapter 01, exercise 1
    title: str
    check: Callable[[Any], str | None]  # returns None when the answer is right, else what differs
    hint: str
    solution: Any
    wrong: list = dataclasses.field(default_factory=list)  # typical wrong answers, each must be rejected


EXERCISES: dict[str, Exercise] = {}


def exercise(key: str, title: str, hint: str, solution: Any, wrong: list | None = None):
    """Register the decorated function as the check of exercise ``key``."""
    def register(check: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
        EXERCISES[key] = Exercise(key, title, check, hint, solution, list(wrong or []))
        return check
    return register


def _find(key: str) -> Exercise:
    """Return exercise ``key``, importing every chapter's exercises first."""
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")
    if key not in EXERCISES:
        raise CourseError(f"There is no exercise {key!r}; the exercises are {', '.join(sorted(EXERCISES))}.")
    return EXERCISES[key]


def answer_problem(key: str, answer: Any) -> str | None:
    """Return what is wrong with ``answer`` to exercise ``key`` (None when it is right); raise NotAttempted."""
    if answer is None:
        raise NotAttempted
    try:
        return _find(key).check(answer)
    except NotImplementedError as e:
        raise NotAttempted from e


def check_answer(key: str, answer: Any) -> None:
    """Check ``answer`` to exercise ``key``; print correct, what differs with a hint, or 'not attempted yet'."""
    ex = _find(key)
    try:
        problem = answer_problem(key, answer)
    except NotAttempted:
        print(f"Exercise {key} ({ex.title}): not attempted yet. Fill in the cell above, run it, then run this cell "
              "again.")
        return
    except Exception as e:  # the learner's code failed: say how, and keep the notebook going
        problem = f"your code raised {type(e).__name__}: {e}"
    if problem is None:
        print(f"Exercise {key} ({ex.title}): correct.")
        return
    print(f"Exercise {key} ({ex.title}): not yet: {problem}. Hint: {ex.hint} "
          f"(cu.show_solution({key!r}) shows a solution.)")


def show_solution(key: str) -> None:
    """Print the reference solution of exercise ``key``."""
    solution = _find(key).solution
    if callable(solution) and not isinstance(solution, (int, float)):
        print(inspect.getsource(solution))
    else:
        print(f"{key}: {solution!r}")
