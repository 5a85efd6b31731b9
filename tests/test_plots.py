"""course_utils.plots: figures return what they draw on, and importing the package does not load matplotlib."""
from __future__ import annotations

import subprocess
import sys

import matplotlib.pyplot as plt
import pytest

import course_utils as cu


def test_importing_course_utils_does_not_import_matplotlib():
    probe = "import sys, course_utils; print(sorted(m for m in sys.modules if m.split('.')[0] in " \
            "('matplotlib', 'seaborn', 'pandas')))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def _rate(images_per_second, rates, note=""):
    return cu.Throughput(images_per_second, rates, 64, 640, 1.0, [], note=note)


def test_plot_speedups_draws_one_bar_per_measurement_with_its_range_and_ratio():
    results = {"seed loop": _rate(100.0, [90.0, 100.0, 110.0]),
               "fast": _rate(250.0, [240.0, 250.0, 270.0], note="kept: +150% vs the best so far"),
               "slower": _rate(80.0, [80.0], note="dropped: 20% slower than the best so far"),
               "fp16": "n/a on CPU: needs CUDA"}
    fig = cu.plot_speedups(results, "seed loop", xlabel="images/s")
    ax = fig.axes[0]
    fig.canvas.draw()  # fills in the tick labels
    bars = {label.get_text(): patch for label, patch in zip(ax.get_yticklabels(), ax.patches)}
    assert list(bars) == ["slower", "fast", "seed loop"]  # the first row on top; strings left out
    assert bars["fast"].get_width() == 250.0
    colors = {name: patch.get_facecolor()[:3] for name, patch in bars.items()}
    assert colors["seed loop"] != colors["fast"] != colors["slower"] != colors["seed loop"]
    assert sorted(t.get_text() for t in ax.texts) == ["0.80x", "1.00x", "2.50x"]
    assert ax.get_xlabel() == "images/s" and ax.get_xlim()[1] == pytest.approx(270.0 * 1.15)
    assert isinstance(fig, plt.Figure)
    plt.close(fig)
    first = cu.plot_speedups(results)  # the default baseline: the first measured row
    assert "seed loop" in first.axes[0].get_title()
    plt.close(first)
    with pytest.raises(cu.CourseError, match="baseline 'fp16' is not among the measured rows"):
        cu.plot_speedups(results, "fp16")


def test_show_images_and_reconstructions_take_uint8_or_float(fashion_test):
    images = fashion_test.images[:4]
    ax = cu.show_images(images, nrow=4)
    same = cu.show_images(cu.to_float(images), nrow=4)
    assert (ax.images[0].get_array() == same.images[0].get_array()).all()
    fig = cu.show_reconstructions(images, cu.to_float(images), n=4)
    assert [a.get_ylabel() for a in fig.axes] == ["original", "reconstruction"]
    plt.close("all")
