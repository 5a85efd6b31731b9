"""tools/point_at.py: the course's home in one place, and one command to point a fork's badges and installs at it."""
import shutil
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent
FILES = ["pyproject.toml", "README.md", "CONTRIBUTING.md", "docs", "benchmarks/README.md", "notebooks"]


def _tool():
    return load_script("tools/point_at.py")


def _copy(tmp_path: Path) -> Path:
    for name in FILES:
        source, target = ROOT / name, tmp_path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("checkpoints", ".ipynb_checkpoints"))
        else:
            shutil.copy(source, target)
    return tmp_path


def _texts(root: Path) -> dict[str, str]:
    paths = [p for name in FILES for p in ([root / name] if (root / name).is_file() else
                                           sorted((root / name).glob("*")))]
    return {str(p.relative_to(root)): p.read_text() for p in paths if p.suffix in (".toml", ".md", ".ipynb")}


def test_every_badge_and_install_line_points_at_the_configured_home():
    tool = _tool()
    repository, branch = tool.course_home(ROOT)
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        text = path.read_text()
        assert f"colab.research.google.com/github/{repository}/blob/{branch}/notebooks/{path.name}" in text
        assert f"git+https://github.com/{repository}" in text


def test_a_fork_is_one_command_and_the_way_back_restores_every_byte(tmp_path):
    tool = _tool()
    root = _copy(tmp_path)
    original = _texts(root)
    changed = tool.point_at(root, "alice/ae-course", "spring-2027")
    assert len(changed) >= 7  # pyproject, README, the five notebooks
    forked = _texts(root)
    assert not any("conv-autoencoder-course" in text for text in forked.values())
    chapter = forked["notebooks/01_convnets_as_feature_extractors.ipynb"]
    assert "colab.research.google.com/github/alice/ae-course/blob/spring-2027/notebooks/01_" in chapter
    assert "git+https://github.com/alice/ae-course@spring-2027" in chapter
    assert tool.course_home(root) == ("alice/ae-course", "spring-2027")
    tool.point_at(root, "conv-autoencoder-course/course", "main")
    assert _texts(root) == original
