"""Render the whole course, with its stored outputs, as static HTML readable offline (no Jupyter needed).

    .venv/bin/python tools/build_site.py            # writes site/index.html and one page per chapter
    .venv/bin/python tools/build_site.py --out DIR

Nothing is executed: the pages show the outputs stored in the notebooks (the laptop run). Progress
bars appear as their stored final text, since the widget scripts would need the network; figures
are embedded in the pages.
"""
from __future__ import annotations

import argparse
import html
import json
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parent.parent
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def offline_copy(nb):
    """Return a copy of ``nb`` whose widget outputs show their stored text (widgets need scripts from the network)."""
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            output.get("data", {}).pop(WIDGET_VIEW, None)
    return nb


def title_of(nb, fallback: str) -> str:
    """Return the notebook's first Markdown heading, without the '#'."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return fallback


def build(out: Path, notebooks: list[Path]) -> list[Path]:
    """Write one HTML page per notebook and an index into ``out``; return the pages written."""
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    pages, rows = [], []
    for path in notebooks:
        nb = nbformat.read(path, as_version=4)
        body, _ = exporter.from_notebook_node(offline_copy(nb))
        page = out / f"{path.stem}.html"
        page.write_text(body, encoding="utf-8")
        pages.append(page)
        rows.append(f'<li><a href="{page.name}">{html.escape(title_of(nb, path.stem))}</a></li>')
    index = out / "index.html"
    index.write_text("<!doctype html><meta charset='utf-8'><title>Convolutional autoencoders, hands-on</title>"
                     "<h1>Convolutional autoencoders, hands-on, in PyTorch</h1>"
                     "<p>Every chapter with the outputs of its stored run (laptop profile, 2-core CPU).</p>"
                     f"<ol>{''.join(rows)}</ol>\n", encoding="utf-8")
    return [index, *pages]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "site", help="folder for the pages (default: site/)")
    args = parser.parse_args()
    for page in build(args.out, sorted((ROOT / "notebooks").glob("*.ipynb"))):
        print(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
