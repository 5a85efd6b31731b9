"""Shared fixtures: real data (Fashion-MNIST from Debian's package, CIFAR-10 packs) and isolated data roots."""
from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

import course_utils as cu  # noqa: E402
from course_utils import data as data_module  # noqa: E402

import data_policy  # noqa: E402

FASHION_DIR = data_module.SYSTEM_FASHION_MNIST_DIR
SHARED = os.environ.get("COURSE_DATA_DIR")


def _cifar_pack_dir() -> Path | None:
    for candidate in (SHARED, str(Path(__file__).resolve().parents[2] / "shared" / "datasets")):
        if candidate and (Path(candidate) / "cifar10" / "test.npz").is_file():
            return Path(candidate)
    return None


CIFAR_DIR = _cifar_pack_dir()
# Tests that need a dataset skip with one reason naming the remedies (in CI, where the data must be, they fail).
needs_fashion = pytest.mark.usefixtures("fashion_available")
needs_cifar = pytest.mark.usefixtures("cifar_available")


def pytest_configure(config) -> None:
    """Register the course's markers (``pytest -m distributed`` selects the multi-process tests)."""
    config.addinivalue_line("markers", "distributed: launches several training processes (torchrun, gloo on the CPU)")


@pytest.fixture
def fashion_available() -> None:
    """Skip (in CI: fail) unless Fashion-MNIST can be loaded: Debian's copy, or a download."""
    data_policy.require_dataset("fashion-mnist")


@pytest.fixture
def cifar_available() -> None:
    """Skip (in CI: fail) unless a CIFAR-10 pack is here: tests read it directly."""
    data_policy.skip_for_data(None if CIFAR_DIR is not None else data_policy.no_data_reason("cifar10"))


def _isolate(monkeypatch: pytest.MonkeyPatch, folder: Path) -> Path:
    """Point the data root and the user cache at empty folders under ``folder``; return the data root."""
    root = folder / "data"
    root.mkdir(exist_ok=True)
    monkeypatch.setenv("COURSE_DATA_DIR", str(root))
    monkeypatch.setenv("XDG_CACHE_HOME", str(folder / "cache"))
    return root


@pytest.fixture
def isolated_root(tmp_path, monkeypatch):
    """Point the data root and the user cache at empty temporary folders."""
    return _isolate(monkeypatch, tmp_path)


@pytest.fixture(scope="session")
def isolated_system_copy(tmp_path_factory):
    """Return a loader of Debian's Fashion-MNIST through cu.load_dataset, with packs written to a temporary root.

    The repository's data/ folder and the user cache are never touched, whatever COURSE_DATA_DIR says.
    """
    data_policy.require_dataset("fashion-mnist")
    folder = tmp_path_factory.mktemp("isolated")

    def load(split: str) -> cu.ImageData:
        with pytest.MonkeyPatch.context() as monkeypatch:
            _isolate(monkeypatch, folder)
            return cu.load_dataset("fashion-mnist", split)

    return load


@pytest.fixture(scope="session")
def fashion_test(isolated_system_copy) -> cu.ImageData:
    """Return the real Fashion-MNIST test split (10,000 images), read from Debian's package."""
    return isolated_system_copy("test")


@pytest.fixture(scope="session")
def fashion_train(isolated_system_copy) -> cu.ImageData:
    """Return the real Fashion-MNIST train split (60,000 images), read from Debian's package."""
    return isolated_system_copy("train")


@pytest.fixture(scope="session")
def cifar_test() -> cu.ImageData:
    """Return the real CIFAR-10 test split from the shared pack."""
    data_policy.skip_for_data(None if CIFAR_DIR is not None else data_policy.no_data_reason("cifar10"))
    return cu.read_pack(CIFAR_DIR / "cifar10" / "test.npz")


@pytest.fixture
def serve_folder():
    """Return a function that serves a folder over HTTP on 127.0.0.1 and gives its base URL."""
    import functools
    import http.server
    import threading

    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        handler.log_message = lambda *args: None
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)  # loopback only
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def load_script(relative_path: str):
    """Import a repository script (benchmarks/, tools/) as a module, by its path: scripts are not a package."""
    import importlib.util
    import sys
    path = Path(__file__).resolve().parent.parent / relative_path
    if str(path.parent) not in sys.path:  # a script imports its neighbours (e.g. benchmarks/_common.py)
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def stored_outputs_text(nb: dict, html: bool = False) -> str:
    """Return what a stored notebook's outputs print: stream text and each result's text/plain (and text/html)."""
    kinds = ("text/plain", "text/html") if html else ("text/plain",)
    parts = []
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            parts.append("".join(out.get("text", "")))
            parts += ["".join(out.get("data", {}).get(kind, "")) for kind in kinds]
    return "\n".join(parts)
