"""Decode picture files into uint8 arrays: one file, many (threaded, with a progress bar), grey or colour.

What the folder reader (``folders.py``) and the loader of picture datasets such as Flowers-102
(``data.py``) share: Pillow opens the file, EXIF orientation is applied, palettes, transparency and 16-bit
modes are brought to 8-bit grey or RGB, and the picture is resized and centre-cropped if asked.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # PIL modes that store one grey value
PARALLEL_FROM = 1_000  # folders with at least this many pictures are read by several threads


@dataclasses.dataclass
class Picture:
    """One decoded picture (or why it could not be), as the folder readers see it."""

    array: np.ndarray | None  # uint8 (H, W, 1) for grey pictures, (H, W, 3) for colour ones; None if unreadable
    width: int = 0  # the file's size, after its EXIF rotation
    height: int = 0
    mode: str = ""  # PIL's mode: "RGB", "L", "RGBA", "P" (palette), "I;16" (16-bit grey), ...
    grey: bool = False
    alpha: bool = False  # had transparency, now composited onto white
    format: str = ""
    error: str = ""


def _grey_palette(im) -> bool:
    palette = im.getpalette() or []
    rgb = np.asarray(palette, dtype=np.int64)[: len(palette) // 3 * 3].reshape(-1, 3)
    return bool(rgb.size) and bool((rgb == rgb[:, :1]).all())


def _on_white(im):
    """Composite a picture with transparency onto a white background (RGB or L)."""
    from PIL import Image
    grey = im.mode in ("LA", "La")
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    out = Image.alpha_composite(white, rgba).convert("RGB")
    return out.convert("L") if grey else out


def _to_8bit(im):
    """Return a 16-bit or 32-bit grey picture as 8-bit grey (scaled, not clipped)."""
    from PIL import Image
    values = np.asarray(im).astype(np.float64)
    top = 1.0 if im.mode == "F" else (65535.0 if values.max(initial=0) > 255 else 255.0)
    return Image.fromarray(np.clip(np.round(values * (255.0 / top)), 0, 255).astype(np.uint8), "L")


def resize_center_crop(im, size: int):
    """Resize a PIL image's shorter side to ``size`` (bilinear, antialiased) and centre-crop ``size`` x ``size``.

    The same result as torchvision's ``Resize(size)`` then ``CenterCrop(size)`` on a PIL image.
    """
    from PIL import Image
    width, height = im.size
    short, long = min(width, height), max(width, height)
    new_short, new_long = size, int(size * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    if (new_w, new_h) != (width, height):
        im = im.resize((new_w, new_h), Image.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return im.crop((left, top, left + size, top + size)) if (new_w, new_h) != (size, size) else im


def read_picture(path: Path, image_size: int | None) -> Picture:
    """Decode one picture file: EXIF rotation, transparency onto white, 16-bit to 8-bit; resize if asked."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as im:
            mode, fmt, (width, height) = im.mode, im.format or "", im.size
            if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF orientation: shown turned by 90 degrees
                width, height = height, width
            if image_size is not None and fmt == "JPEG" and mode in ("RGB", "L"):
                im.draft(mode, (2 * image_size, 2 * image_size))  # decode at 1/2..1/8 scale, still >= 2x the target
            im.load()
            im = ImageOps.exif_transpose(im)  # phone photos are stored sideways with a rotation tag
            alpha = im.mode in ("RGBA", "LA", "La", "RGBa", "PA") or (im.mode == "P" and "transparency" in im.info)
            grey = mode in GREY_MODES or (mode == "P" and _grey_palette(im))
            if alpha:
                im = _on_white(im)
            elif im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
                im = _to_8bit(im)
            im = im.convert("L" if grey else "RGB")
            if image_size is not None:
                im = resize_center_crop(im, image_size)
            array = np.asarray(im)
    except Exception as e:  # PIL raises many types for broken files
        return Picture(None, error=f"{type(e).__name__}: {e}")
    return Picture(array[..., None] if array.ndim == 2 else array, width, height, mode, grey, alpha, fmt)


def default_workers(n_files: int) -> int:
    """Return how many threads read a folder of ``n_files`` pictures: up to 4 (one per core) from PARALLEL_FROM files."""
    return min(4, os.cpu_count() or 1) if n_files >= PARALLEL_FROM else 1


def read_pictures(paths: Sequence[Path], image_size: int | None, workers: int | None = None,
                   desc: str = "reading pictures", progress: bool = True) -> list[Picture]:
    """Decode many picture files, in file order, with a progress bar; several threads for large folders.

    Pillow releases Python's global lock while it decodes and resizes, so threads overlap that work.
    """
    from tqdm.auto import tqdm

    workers = default_workers(len(paths)) if workers is None else workers
    bar = tqdm(total=len(paths), desc=desc, unit="img", disable=not progress or len(paths) < 200)
    with bar:
        if workers <= 1:
            out = []
            for p in paths:
                out.append(read_picture(p, image_size))
                bar.update(1)
            return out
        from concurrent.futures import ThreadPoolExecutor
        chunk = max(16, min(256, len(paths) // (8 * workers) or 1))

        def read_chunk(part: Sequence[Path]) -> list[Picture]:
            got = [read_picture(p, image_size) for p in part]
            bar.update(len(part))
            return got

        with ThreadPoolExecutor(workers) as pool:
            parts = pool.map(read_chunk, [paths[i:i + chunk] for i in range(0, len(paths), chunk)])
            return [picture for part in parts for picture in part]


def grey_of(rgb: np.ndarray) -> np.ndarray:
    """Convert (..., 3) uint8 RGB to (..., 1) grey exactly as Pillow's convert("L") does (ITU-R 601-2 luma)."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]


def as_channels(array: np.ndarray, channels: int) -> np.ndarray:
    if array.shape[-1] == channels:
        return array
    return np.repeat(array, 3, axis=-1) if channels == 3 else grey_of(array)
