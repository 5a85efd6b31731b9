"""When a test needs a dataset that is not here: skip it with one reason that names the remedies, or fail in CI.

Without a local copy and without network a test is skipped; the repository's conftest.py counts
such skips at the end of the run and applies the same rule to notebooks. With CI=true a missing
dataset fails instead: CI has the data, so a skip there would hide a broken setup.
"""
from __future__ import annotations

import functools
import os
import socket

import pytest

NO_DATA = "no dataset"
# Where torchvision downloads each dataset from (checked only when there is no local copy).
DOWNLOAD_HOSTS = {"fashion-mnist": "fashion-mnist.s3-website.eu-central-1.amazonaws.com",
                  "cifar10": "www.cs.toronto.edu", "stl10": "ai.stanford.edu",
                  "flowers102": "www.robots.ox.ac.uk"}


def in_ci() -> bool:
    """Return True inside CI, where every dataset must be present."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@functools.lru_cache(maxsize=None)
def _reachable(host: str) -> bool:
    try:
        socket.create_connection((host, 443), timeout=3).close()
        return True
    except OSError:
        return False


def no_data_reason(name: str, split: str = "test") -> str:
    """Return the one skip reason for a missing dataset, naming the three remedies."""
    debian = "sudo apt-get install dataset-fashion-mnist; " if name == "fashion-mnist" else ""
    return (f"{NO_DATA}: {name}/{split} has no local copy and cannot be downloaded here. Remedies: "
            f"a pack in $COURSE_DATA_DIR/{name}/{split}.npz; {debian}or a network connection once.")


@functools.lru_cache(maxsize=None)
def missing_dataset_reason(name: str, split: str = "test") -> str | None:
    """Return why ``name`` cannot be loaded here (no local copy, no network), or None when it can."""
    from course_utils import data

    if data.local_copy(name, split) is not None or _reachable(DOWNLOAD_HOSTS[name]):
        return None
    return no_data_reason(name, split)


def skip_for_data(reason: str | None) -> None:
    """Skip the calling test for a missing dataset (fail instead in CI); do nothing when ``reason`` is None."""
    if reason is not None:
        (pytest.fail if in_ci() else pytest.skip)(reason)


def require_dataset(name: str, split: str = "test") -> None:
    """Skip the calling test when ``name`` cannot be loaded here (fail instead in CI)."""
    skip_for_data(missing_dataset_reason(name, split))


