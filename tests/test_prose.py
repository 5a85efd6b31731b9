"""Every number a learner reads is an output: measured numbers in a notebook's prose appear in its stored outputs.

A number in a markdown cell that looks measured (a decimal such as 0.0141, 18.5 or 1.93x, a percentage such as
27.1 % or 18%, a rate such as 867 images/s, or a number with thousands separators followed by a unit of speed, time
or memory, such as 1,675 images/s or 1,970-2,140 images/s) must be printed by one of the notebook's stored outputs
(stream text, a result's text/plain, a progress bar's stored text), either as written or as a printed number rounded
to the quoted digits (0.756 for a printed 0.7556). A whole-number percentage must come from an output with a % in it.
Numbers are compared as numbers, without sign or thousands separators. Not measurements: section numbers ("3.2",
"section 3.3") and versions ("torch 2.4"). Exempt:

* numbers inside LaTeX ($...$, $$...$$) and code (`...`, fenced blocks): formulas and code, not measurements;
* numbers in a sentence (or table row) that links an external source: literature values, named and linked (a link
  into the course's own repository does not exempt anything);
* the short per-notebook allowlist ALLOWED below, each entry with its reason.

The check is a bag of printed numbers, not a parser of meaning: a quoted number that happens to equal some other
printed number passes. It catches stale and invented numbers; it does not prove a sentence right.
"""
from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# The course's own pages (its repository, as pyproject's [tool.course] names it, and Colab): linking them cites nothing.
_HOME = re.search(r'^\[tool\.course\]\s*\nrepository = "([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
COURSE_URLS = (f"https://github.com/{_HOME.group(1) if _HOME else 'conv-autoencoder-course/course'}/",
               "https://colab.research.google.com/")

# Per notebook: quoted number (as written in the prose) -> why it need not appear in that notebook's outputs.
ALLOWED: dict[str, dict[str, str]] = {
    "04_bottleneck_size": {
        "0.00225": "PCA on the full 50,000-image train split, measured for the course; tests/test_ch04.py checks it",
        "0.00302": "PCA on the full 50,000-image train split, measured for the course; tests/test_ch04.py checks it",
        "0.00224": "the same PCA on the shared CIFAR-10 pack; tests/test_ch04.py re-measures it",
        "0.00300": "the same PCA on the shared CIFAR-10 pack; tests/test_ch04.py re-measures it",
    },
}

_SKIP = re.compile(r"```.*?```|\$\$.*?\$\$|\$[^$\n]+\$|`[^`\n]+`", re.S)  # fenced code, LaTeX, inline code
# Section numbers and versions: "### 3.2 Spatial codes", "section 3.3", "torch 2.4 or later".
_NOT_MEASURED = re.compile(r"^#+\s*[\d.]+|\b(?:[Ss]ections?|§|torch|PyTorch|Python)\s+\d+(?:\.\d+)*", re.M)
_EXTERNAL_LINK = re.compile(r"\]\((https?://[^)\s]+)\)")
# A number as prose writes it: 0.0141, 18.5, 1,675, 4.7e-10; not part of a word, a version (2.14.1) or a shape (4x7x7).
_PROSE_NUMBER = re.compile(r"(?<![\w.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(e[-+]?\d+)?(?!x\d|[^\W_x]|_|[.,]\d)")
# A number as an output prints it (tables, tqdm's "52.30batch/s", "img_s=6,865", "0.0312]").
_PRINTED_NUMBER = re.compile(r"(?<![\d.,])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(e[-+]?\d+)?")
_PERCENT = re.compile(r"\s?%")
# A number with a unit of speed, time or memory is a measurement, also when a range or comparison sits between them:
# "1,675 images/s", "about 6,900 instead of 4,200 images/s", "1,970-2,140 images/s". Without thousands separators only
# a rate counts ("867 images/s"): "16 MiB" or "5 s" are as often arithmetic or settings as measurements.
_BETWEEN = r"(?:\s*(?:[-–]|to|and|or|vs\.?|against|instead of)\s*[\d,.]+)*"
_UNIT = re.compile(_BETWEEN + r"\s?(?:images?/s|img/s|images per second|[GMk]?FLOP/s|ms\b|s\b|seconds\b|[KMG]iB\b)")
_RATE = re.compile(_BETWEEN + r"\s?(?:images?/s|img/s|images per second|[GMk]?FLOP/s)")


def _units(markdown: str) -> list[str]:
    """Split a markdown cell into the pieces an exemption applies to: sentences, and each table row or heading."""
    pieces = []
    for block in re.split(r"\n\s*\n|\n(?=\s*(?:[*+-]|\d+\.)\s)|\n(?=\|)|\n(?=#)|(?<=\|)\n", markdown):
        pieces += re.split(r"(?<=[.!?])\s+(?=[A-Z*\[])", block)
    return pieces


def quoted_numbers(markdown: str) -> list[str]:
    """Return the measured-looking numbers of a markdown text, outside code, LaTeX and linked sentences.

    Each is returned as written, a percentage with its % sign and without the space before it ("27.1%").
    """
    found = []
    for unit in _units(_NOT_MEASURED.sub(" ", _SKIP.sub(" ", markdown))):
        external = [u for u in _EXTERNAL_LINK.findall(unit) if not u.startswith(COURSE_URLS)]
        if external:
            continue
        text = _EXTERNAL_LINK.sub("]", unit)  # a course link's URL is not prose
        for m in _PROSE_NUMBER.finditer(text):
            whole, decimals, _ = m.groups()
            after = text[m.end():]
            if _PERCENT.match(after):
                found.append(m.group(0) + "%")
            elif decimals or _RATE.match(after) or ("," in whole and _UNIT.match(after)):
                found.append(m.group(0))
    return found


_RATIO = re.compile(r"\s?(?:x\b|×|times\b)")  # "1.93x", "1.93 ×", "1.8 times"
_RATIO_HEADER = re.compile(r" / |\bratio\b|\btimes\b|×|\bx [A-Za-z]")  # a table column of ratios: "AE / PCA"


def quoted_ratios(markdown: str) -> set[str]:
    """Return the quoted numbers that the prose calls a ratio ("1.93x", "1.8 times"): a ratio must be printed as one."""
    ratios = set()
    for unit in _units(_NOT_MEASURED.sub(" ", _SKIP.sub(" ", markdown))):
        text = _EXTERNAL_LINK.sub("]", unit)
        ratios |= {m.group(0) for m in _PROSE_NUMBER.finditer(text) if m.group(2) and _RATIO.match(text[m.end():])}
    return ratios


def printed_ratios(nb: dict) -> set[str]:
    """Return the numbers the outputs print as ratios: followed by x, × or "times", or in a table of ratios."""
    found = set()
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = "".join(output.get("text", ""))
            if not any(mime.startswith("image/") for mime in data):
                text += "".join(data.get("text/plain", ""))
            header = "\n".join(text.splitlines()[:2])
            numbers = list(_PRINTED_NUMBER.finditer(text))
            if _RATIO_HEADER.search(header):  # a table whose columns are ratios ("flat AE / PCA (MSE)")
                found |= {m.group(0) for m in numbers}
            else:
                found |= {m.group(0) for m in numbers if _RATIO.match(text[m.end():])}
    return found


def printed_numbers(nb: dict, percentages: bool = False) -> set[str]:
    """Return every number a notebook's stored outputs print: stream text, and each result's or bar's text/plain.

    With ``percentages``, only the numbers that can back a quoted whole-number percentage: those printed with a %
    sign, and those of an output (a table, a printed line) that has a % in it, but not a progress bar's counts.
    """
    texts = []
    for cell in nb["cells"]:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            text = "".join(output.get("text", ""))
            if not any(mime.startswith("image/") for mime in data):  # a figure's text is "<Figure size 1200x552 ...>"
                text += "".join(data.get("text/plain", ""))
            bar = "application/vnd.jupyter.widget-view+json" in data
            if not percentages or ("%" in text and not bar):
                texts.append(text)
            else:
                texts += [m.group(1) for m in re.finditer(r"([\d.,]+)\s?%", text)]
    return {m.group(0) for m in _PRINTED_NUMBER.finditer("\n".join(texts))}


def _decimal(number: str) -> Decimal:
    return Decimal(number.replace(",", ""))


def is_printed(quoted: str, printed: set[str]) -> bool:
    """Return whether ``quoted`` is one of the printed numbers, or one of them rounded to the quoted digits."""
    if quoted in printed or quoted.replace(",", "") in {p.replace(",", "") for p in printed}:
        return True
    q = _decimal(quoted)
    mantissa = quoted.split("e")[0]
    digits = len(mantissa.split(".")[1]) if "." in mantissa else 0
    for p in printed:
        p_mantissa = p.split("e")[0]
        if (len(p_mantissa.split(".")[1]) if "." in p_mantissa else 0) < digits and "e" not in p:
            continue  # a printed 0.5 does not vouch for a quoted 0.50
        value = _decimal(p)
        if "e" in quoted:  # compare in the quoted scientific notation
            if float(f"{float(value):.{digits}e}") == float(q):
                return True
            continue
        step = Decimal(1).scaleb(-digits)
        if any(value.quantize(step, rounding=r) == q for r in (ROUND_HALF_UP, ROUND_HALF_EVEN)):
            return True
    return False


def unprinted_numbers(nb: dict, allowed: dict[str, str] | None = None) -> list[tuple[int, str]]:
    """Return (cell index, number) for each measured-looking number in the prose that no stored output prints."""
    printed, percentages, allowed = printed_numbers(nb), printed_numbers(nb, percentages=True), allowed or {}
    ratios = printed_ratios(nb)
    missing = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        called_ratios = quoted_ratios("".join(cell["source"]))
        for quoted in quoted_numbers("".join(cell["source"])):
            number = quoted.removesuffix("%")
            # A whole-number percentage ("11%") would match any printed 11 (a layer index, a size): it needs a % nearby.
            candidates = percentages if quoted.endswith("%") and "." not in number else printed
            # A ratio ("1.00x the one-thread rate") must be printed as a ratio, not match any printed 1.00.
            candidates = ratios if quoted in called_ratios else candidates
            if quoted not in allowed and not is_printed(number, candidates):
                missing.append((index, quoted))
    return missing


# --------------------------------------------------------------------------- the checker, on made-up notebooks
def _notebook(markdown: str, output: str) -> dict:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell(markdown),
                nbformat.v4.new_code_cell("print(...)", outputs=[nbformat.v4.new_output("stream", text=output)])]
    return json.loads(nbformat.writes(nb))


def test_a_quoted_number_that_no_output_prints_is_caught():
    nb = _notebook("The stride encoder reaches a test MSE of 0.0212.", "mse 0.0209\n")
    assert unprinted_numbers(nb) == [(0, "0.0212")]


def test_a_printed_number_rounded_to_the_quoted_digits_passes():
    nb = _notebook("SSIM 0.756, PSNR 18.5 dB, 27.1 % and 1,675 images/s; k=2 is 1.57x the best.",
                   "ssim 0.7556 psnr 18.5008 acc 27.1% 1675.4 images/s ratio 1.5703\n")
    assert unprinted_numbers(nb) == []
    assert unprinted_numbers(_notebook("SSIM 0.757", "ssim 0.7556\n")) == [(0, "0.757")]  # rounds to 0.756
    assert unprinted_numbers(_notebook("MSE 0.50", "mse 0.5\n")) == [(0, "0.50")]  # digits nobody printed


def test_the_issues_mismatches_are_caught():
    # A change quoted as +11% where the output says +8.8%, and seed numbers (chapter 03's) that no output holds.
    assert unprinted_numbers(_notebook("channels_last: +11%.", "channels_last  1,689  kept: +8.8%\n")) == [(0, "11%")]
    # a whole-number percentage needs a % in the output that backs it, not any printed 11 (a layer index, a size)
    nb = _notebook("+11 %", "layer 11: Conv2d\n")
    nb["cells"][1]["outputs"].append(nbformat.v4.new_output(  # a progress bar: its % does not count
        "display_data", {"text/plain": "fit: 100%|██████████| 11/11", "application/vnd.jupyter.widget-view+json": {}}))
    assert unprinted_numbers(nb) == [(0, "11%")]
    assert unprinted_numbers(_notebook("+11 %", "                  % of matmul\nchannels_last              11\n")) == []
    nb = _notebook("nearest + conv: 20.7, 19.7 and 21.0 dB between seeds", "nearest 20.6921 dB\n")
    assert unprinted_numbers(nb) == [(0, "19.7"), (0, "21.0")]
    assert quoted_numbers("trained at about 2,700 img/s; 12,000 training images; 27.1 % of them") == ["2,700", "27.1%"]


def test_a_ratio_must_be_printed_as_a_ratio():
    # "1.00x the one-thread rate" where the run printed 0.69x: a printed 1.00 elsewhere does not back it
    nb = _notebook("Two threads ran at 1.00x the one-thread rate.", "threads: 0.69x; loss 1.00\n")
    assert unprinted_numbers(nb) == [(0, "1.00")]
    assert unprinted_numbers(_notebook("It ran at 0.69x.", "threads: 0.69x; loss 1.00\n")) == []
    assert unprinted_numbers(_notebook("The AE makes 1.8 times PCA's error.", "      AE / PCA\n64    1.83730\n")) == []
    assert unprinted_numbers(_notebook("The AE makes 0.82 times PCA's error.", "ssim 0.820\n")) == [(0, "0.82")]


def test_code_latex_literature_and_the_allowlist_are_exempt():
    markdown = ("Formula $H = 2.5 s$, code `lr=3.5e-3`, and\n```python\nx = 0.125\n```\n"
                "UvA reports 0.0071 at 64 values ([UvA tutorial 9](https://uvadlc-notebooks.readthedocs.io/x)). "
                f"The course's own [README]({COURSE_URLS[0]}blob/main/README.md) "
                "says 0.0042. We measured 0.0099.")
    assert quoted_numbers(markdown) == ["0.0042", "0.0099"]
    nb = _notebook(markdown, "0.0099\n")
    assert unprinted_numbers(nb) == [(0, "0.0042")]
    assert unprinted_numbers(nb, {"0.0042": "checked elsewhere"}) == []


def test_numbers_in_words_shapes_and_versions_are_not_measurements():
    assert quoted_numbers("torch 2.14.1, a 4x7x7 code, 7×7×512 = 25,088 features, 5 epochs, 1/6 of it") == []


# --------------------------------------------------------------------------- the stored notebooks
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_measured_numbers_in_the_prose_appear_in_the_stored_outputs(path):
    nb = json.loads(path.read_text())
    missing = unprinted_numbers(nb, ALLOWED.get(path.stem))
    assert not missing, (f"{path.name}: numbers in the prose that no stored output prints (stale prose? quote the "
                         f"output, or link the source): {missing}")


def test_chapter_04s_allowlist_is_what_test_ch04_checks():
    from test_ch04 import PACK_PCA_FULL_TRAIN, QUOTED_PCA_FULL_TRAIN

    checked = {f"{v:.5f}" for d in (QUOTED_PCA_FULL_TRAIN, PACK_PCA_FULL_TRAIN) for v in d.values()}
    assert set(ALLOWED["04_bottleneck_size"]) == checked


@pytest.mark.parametrize("stem", sorted(ALLOWED))
def test_every_allowlisted_number_is_still_quoted(stem):
    nb = json.loads((ROOT / "notebooks" / f"{stem}.ipynb").read_text())
    quoted = {q for c in nb["cells"] if c["cell_type"] == "markdown" for q in quoted_numbers("".join(c["source"]))}
    assert set(ALLOWED[stem]) <= quoted, f"allowlist entries no longer in the prose: {set(ALLOWED[stem]) - quoted}"
