"""tools/build_site.py: the course as static HTML pages with the stored outputs, readable offline."""
import re
from pathlib import Path

from conftest import load_script

ROOT = Path(__file__).resolve().parent.parent


def test_the_site_has_every_chapter_with_its_outputs_and_finished_progress_bars(tmp_path):
    site = load_script("tools/build_site.py")
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    pages = site.build(tmp_path, notebooks)
    assert [p.name for p in pages] == ["index.html", *[f"{nb.stem}.html" for nb in notebooks]]
    index = pages[0].read_text()
    assert all(f'href="{nb.stem}.html"' in index for nb in notebooks)
    chapter = (tmp_path / "01_convnets_as_feature_extractors.html").read_text()
    assert "Convnets as feature extractors" in index or "feature extractors" in index.lower()
    assert re.search(r"100%\|█+\|", chapter)  # progress bars as their stored final text
    assert "widget-view+json" not in chapter  # no widget that would need scripts from the network
    assert chapter.count("data:image/png;base64") >= 5  # figures embedded in the page
