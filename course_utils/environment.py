"""Device, seeding, Colab detection and the hardware *profile* that sizes experiments."""
from __future__ import annotations

import dataclasses
import os
import platform
import random
import sys
from pathlib import Path

import numpy as np
import torch

from .errors import CourseError


def get_device() -> torch.device:
    """Return the device to train on: CUDA, then Apple MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and PyTorch (all devices) so runs repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def in_colab() -> bool:
    """Return True when running inside Google Colab."""
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ


@dataclasses.dataclass(frozen=True)
class Profile:
    """How big every experiment is on this hardware.

    Notebooks ask the profile for sizes instead of hard-coding them, so one notebook
    runs in seconds in CI (``smoke``), in minutes on a laptop CPU (``laptop``) and at
    full size on a GPU (``gpu``).
    """

    name: str
    train_images: int | None  # None = the whole split
    test_images: int | None
    epochs: int
    batch_size: int
    sweep_epochs: int  # epochs for each run of a sweep (many models in one notebook)
    compile: bool  # torch.compile pays off only on long GPU runs
    sweep_share: float  # share of the training images each run of a many-model sweep trains on (chapter 04)
    images_per_repeat: int  # images in each timed block of a speed measurement (chapter 05)
    timing_repeats: int  # timed blocks per speed measurement; the rate reported is their median (chapter 05)
    description: str
    one_class_cifar_classes: int = 10  # CIFAR-10 classes that take a turn as the "normal" class (chapter 07)
    budget_seconds: float = 45.0  # training seconds per model in a fixed-time comparison (chapter 09)

    def take(self, n_available: int, which: str = "train") -> int:
        """Return how many images of a split of ``n_available`` this profile uses."""
        limit = self.train_images if which == "train" else self.test_images
        return n_available if limit is None else min(limit, n_available)


PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", train_images=1024, test_images=512, epochs=1, batch_size=128, sweep_epochs=1,
                     compile=False, sweep_share=0.5, images_per_repeat=256, timing_repeats=1,
                     description="CI regression run: seconds per experiment, numbers are not meaningful",
                     one_class_cifar_classes=2, budget_seconds=3.0),
    "laptop": Profile("laptop", train_images=12_000, test_images=2_000, epochs=4, batch_size=128, sweep_epochs=2,
                      compile=False, sweep_share=0.5, images_per_repeat=1024, timing_repeats=5,
                      description="2-core CPU: each notebook in at most 5 minutes",
                      one_class_cifar_classes=10, budget_seconds=45.0),
    # Sized (2026-12-07, estimated, not yet measured: benchmarks/README.md, "Sizing the gpu profile") so that each
    # chapter runs in at most 3 minutes on the lent H200: whole training splits at batch 512, where a step of
    # these small models costs about what a step of 128 does; 30 epochs would take 88 minutes for the course.
    "gpu": Profile("gpu", train_images=None, test_images=2_000, epochs=4, batch_size=512, sweep_epochs=4,
                   compile=False, sweep_share=1.0, images_per_repeat=16384, timing_repeats=3,
                   description="one CUDA GPU: whole training splits, larger batches, each chapter in minutes",
                   one_class_cifar_classes=10, budget_seconds=45.0),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the experiment profile: ``name``, else $COURSE_PROFILE, else by hardware."""
    name = name or os.environ.get("COURSE_PROFILE") or ("gpu" if torch.cuda.is_available() else "laptop")
    key = name.strip().lower()
    if key not in PROFILES:
        raise CourseError(
            f"Unknown profile {name!r}. Known profiles: {', '.join(PROFILES)}. "
            "Set COURSE_PROFILE to one of them (or unset it to pick by hardware)."
        )
    if key == "gpu" and not torch.cuda.is_available():
        _warn_gpu_profile_without_gpu()
    return PROFILES[key]


def _warn_gpu_profile_without_gpu() -> None:
    """Warn, with the expected cost, that the gpu profile was asked for on a machine without CUDA."""
    import warnings
    gpu, laptop = PROFILES["gpu"], PROFILES["laptop"]
    full_split = 50_000  # CIFAR-10's training split, what the gpu profile trains on
    ratio = full_split * gpu.epochs / (laptop.train_images * laptop.epochs)
    warnings.warn(
        f"COURSE_PROFILE=gpu, but this machine has no CUDA GPU. The gpu profile trains on whole splits for "
        f"{gpu.epochs} epochs: about {ratio:.0f}x the laptop profile's work, i.e. up to about "
        f"{5 * ratio:.0f} minutes per notebook on a CPU instead of at most 5. Set COURSE_PROFILE=laptop "
        "(or unset it) unless you mean it.", stacklevel=3)


def start_chapter(seed: int = 0) -> tuple[Profile, torch.device]:
    """Seed everything, print the setup line and return (profile, device): a chapter's first code line."""
    profile, device = get_profile(), get_device()
    seed_everything(seed)
    print(describe_setup(profile, device))
    return profile, device


def describe_setup(profile: Profile | None = None, device: torch.device | None = None) -> str:
    """Return one line naming the profile, device and torch version, for a notebook's log."""
    profile = profile or get_profile()
    device = device or get_device()
    where = device.type
    if device.type == "cuda":
        where += f" ({torch.cuda.get_device_name(device)})"
    return (f"profile={profile.name} ({profile.description}); device={where}; "
            f"torch {torch.__version__}; {torch.get_num_threads()} CPU threads")


def cpu_name() -> str:
    """Return the processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"
