"""Chapter 09's hand-written plumbing: the sample-photo folder and its credits, the PNG folder, the image-size
table, optional datasets and the cost of a training step.

The chapter's "own folder" is made of real photographs that ship inside installed packages,
so it runs offline and in CI: scikit-image's sample images (public domain or CC0, credits in
`SAMPLE_PHOTOS`) and scikit-learn's two sample photos (CC BY 2.0). What the learner writes (reading a
folder, the held-out photos, the 100-value model) is in the generated module ``ch09_your_own_images``.
"""
from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import ImageData, load_dataset
from ..errors import CourseError, DataNotFoundError
from ..layers import flops_per_image
from ..models import ConvAutoencoder, count_parameters, recommended_autoencoder
from ._ch04_analysis import bottleneck_map

# (package, file inside its data folder, what it shows, licence and credit), as the packages' own docs give them
SAMPLE_PHOTOS: dict[str, tuple[str, str, str, str]] = {
    "astronaut.png": ("skimage", "astronaut.png", "astronaut Eileen Collins", "public domain (NASA)"),
    "chelsea.png": ("skimage", "chelsea.png", "Chelsea the cat", "CC0, Stefan van der Walt"),
    "coffee.png": ("skimage", "coffee.png", "a cup of coffee", "CC0, Rachel Michetti"),
    "rocket.jpg": ("skimage", "rocket.jpg", "a Falcon 9 launch", "public domain (SpaceX)"),
    "hubble_deep_field.jpg": ("skimage", "hubble_deep_field.jpg", "Hubble eXtreme Deep Field",
                              "public domain (NASA)"),
    "retina.jpg": ("skimage", "retina.jpg", "a human retina", "CC0 (Wikimedia Commons)"),
    "china.jpg": ("sklearn", "china.jpg", "a temple in China", "CC BY 2.0 (scikit-learn's images/README.txt)"),
    "flower.jpg": ("sklearn", "flower.jpg", "a flower", "CC BY 2.0 (scikit-learn's images/README.txt)"),
    "camera.png": ("skimage", "camera.png", "a cameraman (grey)", "CC0, Lav Varshney"),
    "coins.png": ("skimage", "coins.png", "Greek coins from Pompeii (grey)",
                  "no known copyright restrictions (Brooklyn Museum)"),
    "brick.png": ("skimage", "brick.png", "a brick wall (grey)", "CC0 (cc0textures.com)"),
    "grass.png": ("skimage", "grass.png", "grass (grey)", "CC0 (cc0textures.com)"),
    "gravel.png": ("skimage", "gravel.png", "gravel (grey)", "CC0 (cc0textures.com)"),
}
GREY_PHOTOS = ("camera.png", "coins.png", "brick.png", "grass.png", "gravel.png")
TEST_PHOTOS = ("coffee.png", "flower.jpg")  # held out: the patches of these two photos are the test split
SIZES = (32, 64, 96)  # image sides compared in section 6
COMPRESSION = 12  # the course's recommended code at 32x32 (256 values of 3,072), kept at every size


def sample_photo_path(name: str) -> Path:
    """Return where the installed package keeps one of `SAMPLE_PHOTOS`."""
    if name not in SAMPLE_PHOTOS:
        raise CourseError(f"Unknown sample photo {name!r}; choose one of {', '.join(SAMPLE_PHOTOS)}.")
    package, file, _, _ = SAMPLE_PHOTOS[name]
    if package == "skimage":
        try:
            import skimage
        except ImportError as e:
            raise CourseError("The chapter's sample photos ship with scikit-image: pip install scikit-image "
                              "(it comes with the course: pip install -e .).") from e
        return Path(skimage.__file__).parent / "data" / file
    import sklearn.datasets
    return Path(sklearn.datasets.__file__).parent / "images" / file


def sample_photo_folder(dest: str | Path, layout: str = "classes") -> Path:
    """Copy the sample photos into ``dest`` as a learner's folder would be: ``"classes"`` or ``"flat"``; return it.

    ``"classes"``: ``dest/colour/`` and ``dest/grey/`` (one sub-folder per class, torchvision's
    ImageFolder layout); ``"flat"``: every photo directly in ``dest`` (one class).
    """
    if layout not in ("classes", "flat"):
        raise CourseError(f"layout must be 'classes' or 'flat', got {layout!r}.")
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    for name in SAMPLE_PHOTOS:
        folder = dest if layout == "flat" else dest / ("grey" if name in GREY_PHOTOS else "colour")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(sample_photo_path(name), folder / name)
    return dest


def photo_credits() -> "object":
    """Return a table of the sample photos: file, what it shows, licence and credit, and the package that ships it."""
    import pandas as pd
    return pd.DataFrame([{"file": name, "shows": shows, "licence and credit": licence,
                          "ships with": "scikit-image" if package == "skimage" else "scikit-learn"}
                         for name, (package, _, shows, licence) in SAMPLE_PHOTOS.items()])


# --------------------------------------------------------------------------- image size
def activation_values(model: nn.Module, image_shape) -> int:
    """Return how many values the layers of ``model`` output for one image (what training keeps for backward)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        total += output[0].numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if len(list(m.children())) == 0]
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            model(torch.zeros(1, *image_shape))
            model.train(was)
    finally:
        for h in hooks:
            h.remove()
    return total


def size_model(size: int, channels: int = 3, compression: int = COMPRESSION) -> ConvAutoencoder:
    """Return the recommended autoencoder for ``size`` x ``size`` images, its code 1/``compression`` of the values."""
    return recommended_autoencoder((channels, size, size), channels * size * size // compression)


def size_table(sizes=SIZES, channels: int = 3, compression: int = COMPRESSION):
    """Return what changes with the image side: depth, map, code, compression, parameters, memory, FLOPs per image."""
    import pandas as pd
    rows = {}
    for size in sizes:
        model = size_model(size, channels, compression)
        shape = (channels, size, size)
        stages = model.encoder.total_stride.bit_length() - 1
        c, h, w = bottleneck_map(model, shape)
        fixed = recommended_autoencoder(shape, 256)
        params = count_parameters(model)
        rows[size] = {
            "input values": channels * size * size,
            "encoder stages": stages,
            "map entering the code": f"{c}x{h}x{w}",
            "code size (ratio kept)": model.code_size,
            "parameters (ratio kept)": params,
            "code-256 compression ratio": channels * size * size / 256,
            "code-256 parameters": count_parameters(fixed),
            "activations MB per image": activation_values(model, shape) * 4 / 2**20,
            "training MFLOPs per image": flops_per_image(model, shape) / 1e6,
            "AdamW training memory MB": params * 4 * 4 / 2**20,
        }
    return pd.DataFrame.from_dict(rows, orient="index").rename_axis("image side")


# --------------------------------------------------------------------------- the tutorials' own data
def optional_dataset(name: str, split: str, profile=None, image_size: int | None = None) -> ImageData | None:
    """Return a dataset split, or None with a printed note saying what is missing and how to get it.

    Tries a pack, then torchvision's download (which fails at once without a network).
    """
    try:
        return load_dataset(name, split, image_size=image_size, profile=profile)
    except DataNotFoundError as e:
        why = f"the download failed: {type(e.__cause__).__name__}" if e.__cause__ else "downloads are off"
        size = {"stl10": "2.6 GB", "flowers102": "330 MB"}.get(name, "")
        print(f"{name}/{split} is not available here (no local copy, and {why}).\n  To get it: run this notebook "
              f"once on a machine with internet (e.g. Colab: the loader downloads {size}\n  and keeps a pack), or copy "
              f"the packs {name}/<split>.npz into the folder $COURSE_DATA_DIR points at.")
        return None


def training_memory(model: nn.Module) -> dict[str, float]:
    """Return the MB a model needs to train with AdamW: weights, gradients, and the optimizer's two moments."""
    mb = count_parameters(model) * 4 / 2**20
    return {"parameters": count_parameters(model), "weights MB": mb, "gradients MB": mb,
            "AdamW state MB": 2 * mb, "training memory MB": 4 * mb}


def seconds_per_step(model: nn.Module, data: ImageData, batch_size: int, steps: int, **fit_options) -> float:
    """Return the median seconds of one training step (fit's TrainStep) over ``steps`` timed steps after one warm-up."""
    from ..timing import TimedSteps
    runner = TimedSteps(model, data, batch_size, device="cpu", total_steps=steps + 1, **fit_options)
    runner.run(1)
    return float(np.median([runner.run(1) for _ in range(steps)]))


def steps_affordable(seconds: float, seconds_each: float, least: int = 1) -> int:
    """Return how many steps of ``seconds_each`` fit in a budget of ``seconds`` (at least ``least``)."""
    if seconds_each <= 0:
        raise CourseError(f"seconds_each must be positive, got {seconds_each}.")
    return max(least, int(seconds / seconds_each))


def write_png_folder(data: ImageData, dest: str | Path) -> Path:
    """Write every image of ``data`` as a PNG file into one sub-folder per class under ``dest``; return ``dest``."""
    from PIL import Image
    dest = Path(dest)
    if dest.exists():
        shutil.rmtree(dest)
    names = [c.replace("/", "-") for c in data.classes]
    for name in names:
        (dest / name).mkdir(parents=True)
    pixels = data.images.permute(0, 2, 3, 1).numpy()
    for i, (image, label) in enumerate(zip(pixels, data.labels.tolist())):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(dest / names[label] / f"{i:05d}.png")
    return dest


def png_folder_order(data: ImageData) -> torch.Tensor:
    """Return the order in which `load_image_folder` reads back a `write_png_folder` folder: by class, then index."""
    names = [c.replace("/", "-") for c in data.classes]
    return torch.tensor(sorted(range(len(data)), key=lambda i: (names[int(data.labels[i])], i)), dtype=torch.int64)


def take(data: ImageData, index: torch.Tensor, split: str) -> ImageData:
    """Return the images of ``data`` at ``index``, with their labels, as a split named ``split``."""
    return ImageData(data.images[index], data.labels[index], data.classes, data.name, split)


def timer() -> Callable[[], float]:
    """Return a function that gives the seconds since this call."""
    start = time.perf_counter()
    return lambda: time.perf_counter() - start
