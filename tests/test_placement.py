"""The placement rule: the core never imports a chapter; a chapter imports the core and earlier chapters only.

A chapter's code (``course_utils/chapters/chNN_*.py``, generated from its notebook, and its hand-written plumbing
``_chNN_*.py``) may use the core and what earlier chapters saved, never a later chapter's: a learner reads the
chapters in order. The core (every other module of ``course_utils``, the command-line trainer and the package's
``__init__`` included) imports no chapter, so it works whichever chapters exist: ``cu.X`` is plumbing, and a
notebook imports what a chapter wrote from that chapter's module, by name. Exercises follow their chapter's rule.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "course_utils"
CHAPTER = re.compile(r"^_?ch(\d\d)(?:_|$)")


def imported_modules(source: str, module: str, is_package: bool = False) -> list[str]:
    """Return the absolute names of the course_utils modules (and names) that ``module``'s source imports."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(source)):  # imports inside functions count too
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            name = ".".join(base + ([node.module] if node.module else []))
            found.append(name)
            found += [f"{name}.{alias.name}" for alias in node.names]  # `from .chapters import ch07_x` names a module
    return [name for name in found if name == "course_utils" or name.startswith("course_utils.")]


def imports_of(path: Path) -> list[str]:
    """Return what the package file at ``path`` imports from course_utils."""
    return imported_modules(path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py")


def chapter_number(module: str) -> int | None:
    """Return the chapter a module belongs to (``course_utils.chapters._ch05_x`` -> 5), or None for the core."""
    parts = module.split(".")
    if len(parts) >= 3 and parts[1] in ("chapters", "exercises"):
        match = CHAPTER.match(parts[2])
        return int(match.group(1)) if match else None
    return None


def is_chapter_module(module: str) -> bool:
    parts = module.split(".")
    return len(parts) >= 3 and parts[1] == "chapters" and CHAPTER.match(parts[2]) is not None


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_the_import_reader_sees_relative_and_absolute_imports():
    names = imports_of(PACKAGE / "train.py")
    assert "course_utils.training" in names and "course_utils.data" in names
    names = imported_modules("from .ch01_feature_extractors import Encoder\nfrom ..metrics import fit_pca\n",
                             "course_utils.chapters._ch04_plumbing")
    assert names == ["course_utils.chapters.ch01_feature_extractors",
                     "course_utils.chapters.ch01_feature_extractors.Encoder",
                     "course_utils.metrics", "course_utils.metrics.fit_pca"]
    assert chapter_number("course_utils.chapters._ch04_plumbing") == 4 and is_chapter_module(names[0])


@pytest.mark.parametrize("path", [p for p in SOURCES if chapter_number(module_name(p)) is None
                                  and "exercises" not in p.parts and "chapters" not in p.parts],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_the_core_imports_no_chapter(path):
    chapters = [name for name in imports_of(path) if is_chapter_module(name)]
    assert not chapters, (f"{path.relative_to(PACKAGE.parent)} imports {chapters}: the core must not depend on a "
                          f"chapter. Move what it needs into the core (a helper moves down when a second place uses it).")


@pytest.mark.parametrize("path", [p for p in SOURCES if chapter_number(module_name(p)) is not None],
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_chapter_imports_only_earlier_chapters(path):
    own = chapter_number(module_name(path))
    later = sorted({name for name in imports_of(path) if is_chapter_module(name) and chapter_number(name) > own})
    assert not later, (f"{path.relative_to(PACKAGE.parent)} (chapter {own:02d}) imports {later}: a chapter uses "
                       f"the core and earlier chapters only; move what both need into the core.")


def test_the_rule_catches_a_core_module_that_imports_a_chapter():
    names = imported_modules("from .chapters.ch01_feature_extractors import Encoder\n", "course_utils.metrics")
    assert [n for n in names if is_chapter_module(n)] == ["course_utils.chapters.ch01_feature_extractors",
                                                           "course_utils.chapters.ch01_feature_extractors.Encoder"]
    names = imported_modules("def f():\n    from .ch09_your_own_images import x\n", "course_utils.chapters.ch08_x")
    assert [chapter_number(n) for n in names if is_chapter_module(n)] == [9, 9]  # later chapter, inside a function
    assert chapter_number("course_utils.chapters.ch10_distributed") == 10
    assert chapter_number("course_utils.exercises.ch04") == 4
    assert chapter_number("course_utils.metrics") is None


def test_cu_exports_only_the_core():
    import course_utils as cu

    assert len(set(cu.__all__)) == len(cu.__all__), "a name is listed twice in cu.__all__"
    from_chapters = [name for name in cu.__all__
                     if getattr(getattr(cu, name), "__module__", "").startswith("course_utils.chapters")]
    assert not from_chapters, (f"cu re-exports chapter code {from_chapters}: a notebook imports what a chapter "
                               f"wrote from that chapter's module, by name")
