"""Point every badge, install line and link of the course at another repository (after a fork).

    .venv/bin/python tools/point_at.py alice/ae-course              # branch main
    .venv/bin/python tools/point_at.py alice/ae-course --branch spring-2027

The course's home (repository and branch) lives in one place, ``[tool.course]`` of pyproject.toml.
This rewrites it there and in everything generated from it: the Colab badges and setup cells of
the notebooks, and the GitHub, Colab and ``pip install git+...`` links of the Markdown files.
Notebooks are re-stored in JupyterLab's form; nothing is executed.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from run_notebooks import store_form  # noqa: E402

HOME = re.compile(r'^\[tool\.course\]\s*\nrepository = "([^"]+)"\s*\nbranch = "([^"]+)"', re.M)


def course_home(root: Path = ROOT) -> tuple[str, str]:
    """Return (owner/name, branch) of the course's home, read from pyproject.toml."""
    match = HOME.search((root / "pyproject.toml").read_text())
    if match is None:
        raise SystemExit("pyproject.toml has no [tool.course] table with repository and branch.")
    return match.group(1), match.group(2)


def rewrite(text: str, old: tuple[str, str], new: tuple[str, str]) -> str:
    """Return ``text`` with every link to the old home (repository, branch) pointing at the new one."""
    (old_repo, old_branch), (new_repo, new_branch) = old, new
    pin = lambda branch: "" if branch == "main" else f"@{branch}"
    text = re.sub(rf"(github\.com/|colab\.research\.google\.com/github/){re.escape(old_repo)}/(blob|tree)/"
                  rf"{re.escape(old_branch)}/", rf"\g<1>{new_repo}/\g<2>/{new_branch}/", text)
    return re.sub(rf"git\+https://github\.com/{re.escape(old_repo)}(?:\.git)?{re.escape(pin(old_branch))}(?![\w@/.-])",
                  f"git+https://github.com/{new_repo}{pin(new_branch)}", text)


def point_at(root: Path, repository: str, branch: str = "main") -> list[Path]:
    """Point the course in ``root`` at ``repository`` and ``branch``; return the files changed."""
    import nbformat

    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repository):
        raise SystemExit(f"Give the repository as owner/name, e.g. alice/ae-course; got {repository!r}.")
    old, new = course_home(root), (repository, branch)
    changed = []
    pyproject = root / "pyproject.toml"
    pyproject.write_text(HOME.sub(f'[tool.course]\nrepository = "{repository}"\nbranch = "{branch}"',
                                  pyproject.read_text()))
    changed.append(pyproject)
    for path in sorted([*root.glob("*.md"), *root.glob("docs/*.md"), *root.glob("benchmarks/*.md")]):
        text = path.read_text()
        if rewrite(text, old, new) != text:
            path.write_text(rewrite(text, old, new))
            changed.append(path)
    for path in sorted(root.glob("notebooks/*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        before = nbformat.writes(nb)
        for cell in nb.cells:
            cell.source = rewrite(cell.source, old, new)
        if nbformat.writes(nb) != before:
            nbformat.write(store_form(nb), path)
            changed.append(path)
    return changed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("repository", help="owner/name of the fork on GitHub")
    parser.add_argument("--branch", default="main", help="the branch learners should get (default: main)")
    args = parser.parse_args()
    for path in point_at(ROOT, args.repository, args.branch):
        print(f"updated {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
