"""Chapter 09's exercises: a grey folder reader, a centre crop on tensors, the anothertechs Linear layer's
parameters, compression and depth at 128 pixels."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from . import exercise

_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "camera.png", "coins.png")  # colour and grey, two shapes


def _photo_folder(dest: Path) -> Path:
    """Copy five of scikit-image's sample photos (PNG: real pictures, square and not, colour and grey) into dest."""
    from ..chapters._ch09_materials import sample_photo_path
    for name in _PHOTOS:
        shutil.copyfile(sample_photo_path(name), dest / name)
    return dest


# --------------------------------------------------------------------------- 09.1 a grey folder reader
def read_grey_folder(folder, size: int) -> torch.Tensor:
    """Read every picture in folder, sorted by name, as one uint8 tensor N x 1 x size x size (grey)."""
    from PIL import Image
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    images = []
    for path in sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg")):
        with Image.open(path) as picture:
            square = center_crop(resize(picture.convert("RGB"), size), size)  # shorter side => size, centre square
            images.append(pil_to_tensor(square.convert("L")))  # 3 x size x size => 1 x size x size
    return torch.stack(images)


def _stretched(folder, size):  # a typical wrong answer: squeezes each picture into size x size
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor
    return torch.stack([pil_to_tensor(Image.open(p).convert("L").resize((size, size), Image.BILINEAR))
                        for p in sorted(Path(folder).iterdir())])


def _floats(folder, size):  # a typical wrong answer: values in [0, 1] as float32
    return read_grey_folder(folder, size).float() / 255


@exercise("09.1", "a grey folder reader", solution=read_grey_folder, wrong=[_stretched, _floats],
          hint="resize the shorter side to size and keep the centre square (center_square from section 2), "
               "convert to grey with .convert('L'), keep uint8 (pil_to_tensor, no /255), "
               "and stack to N x 1 x size x size")
def _check_grey_folder(answer) -> str | None:
    from ..folders import load_image_folder
    with tempfile.TemporaryDirectory() as tmp:
        folder = _photo_folder(Path(tmp))
        truth = load_image_folder(folder, image_size=48, channels=1, cache=False, progress=False).images
        got = answer(folder, 48)
    if not isinstance(got, torch.Tensor):
        return f"it returned a {type(got).__name__}, not a tensor"
    if tuple(got.shape) != tuple(truth.shape):
        return f"for {len(_PHOTOS)} photos at size 48 it returned shape {tuple(got.shape)}, not {tuple(truth.shape)}"
    if got.dtype != torch.uint8:
        return f"its dtype is {got.dtype}, not torch.uint8 (one byte per value, 0..255)"
    difference = (got.int() - truth.int()).abs().float().mean().item()
    if difference > 1.0:  # grey before or after resizing differ by rounding only, well below one level on average
        return (f"its pixels differ from cu.load_image_folder(..., channels=1)'s by {difference:.1f} levels of 255 "
                "on average (at most 1 is rounding)")
    return None


# --------------------------------------------------------------------------- 09.2 a centre crop on tensors
def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Return the centre size x size square of every image in a batch N x C x H x W."""
    height, width = images.shape[-2:]
    top, left = round((height - size) / 2), round((width - size) / 2)  # torchvision's rounding
    return images[..., top:top + size, left:left + size]


def _top_left(images, size):  # a typical wrong answer: the top-left square, not the centre
    return images[..., :size, :size]


def _floor_division(images, size):  # a typical wrong answer: rounds down where torchvision rounds
    top, left = (images.shape[-2] - size) // 2, (images.shape[-1] - size) // 2
    return images[..., top:top + size, left:left + size]


@exercise("09.2", "a centre crop on tensors", solution=center_crop, wrong=[_top_left, _floor_division],
          hint="the square starts round((H - size) / 2) rows down and round((W - size) / 2) columns in: "
               "images[..., top:top + size, left:left + size], with Python's round, as torchvision does")
def _check_center_crop(answer) -> str | None:
    from torchvision.transforms.functional import center_crop as reference
    g = torch.Generator().manual_seed(0)
    for shape, size in [((2, 3, 40, 40), 32), ((1, 1, 37, 64), 32), ((3, 3, 64, 43), 32), ((1, 3, 33, 35), 30)]:
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=g)
        truth, got = reference(images, [size, size]), answer(images, size)
        if not isinstance(got, torch.Tensor) or tuple(got.shape) != tuple(truth.shape):
            return f"for images of {shape} and size {size} it returned shape {tuple(getattr(got, 'shape', ()))}, " \
                   f"not {tuple(truth.shape)}"
        if not torch.equal(got, truth):
            return f"for images of {shape} and size {size} its square is not torchvision's centre_crop's"
    return None


# --------------------------------------------------------------------------- 09.3 the anothertechs Linear layer
def _anothertechs_linear() -> nn.Linear:
    """Return the anothertechs encoder's first Linear layer, described on the meta device (no memory used)."""
    from ..replicas import AnothertechsAutoencoder
    with torch.device("meta"):
        layer = AnothertechsAutoencoder().encoder[13]  # [12] is the Flatten before it
    assert isinstance(layer, nn.Linear) and (layer.in_features, layer.out_features) == (131072, 1000)
    return layer


@exercise("09.3", "the anothertechs Linear layer's parameters", solution=131_073_000, wrong=[131_072_000, 131_072],
          hint="a Linear layer from n values to m values holds n x m weights and m biases; here n = 128 x 32 x 32")
def _check_linear_parameters(answer) -> str | None:
    truth = sum(p.numel() for p in _anothertechs_linear().parameters())
    if not isinstance(answer, (int, float)) or answer != truth:
        return f"{answer!r} is not the layer's parameter count"
    return None


# --------------------------------------------------------------------------- 09.4 128 pixels
@exercise("09.4", "compression and depth at 128 pixels", solution=(192.0, 4), wrong=[(64.0, 4), (192.0, 5)],
          hint="a 128x128 colour image holds 3 x 128 x 128 = 49,152 values; the recipe halves the side while the "
               "map is larger than 8x8 (see recommended_autoencoder's source in section 6)")
def _check_size_128(answer) -> str | None:
    from ..models import recommended_autoencoder
    try:
        ratio, stages = answer
    except (TypeError, ValueError):
        return f"{answer!r} is not a pair (compression ratio, encoder stages)"
    model = recommended_autoencoder((3, 128, 128), 256)
    true_stages = model.encoder.total_stride.bit_length() - 1
    problems = []
    if abs(float(ratio) - 3 * 128 * 128 / 256) > 1e-6:
        problems.append(f"the compression ratio is not {ratio!r}")
    if stages != true_stages:
        problems.append(f"the encoder does not have {stages!r} stages")
    return "; ".join(problems) or None
