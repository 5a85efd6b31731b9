"""Read your own pictures: a folder of images as a dataset (decoded once, cached as a pack), a few photos, patches.

Chapter 09 teaches reading a folder by hand; this is the robust reader a learner points at any folder of
their own: unreadable files and links that loop are skipped with a warning, grey and colour pictures are
brought to the same channels, and the decoded folder is cached as a pack beside the datasets, so the next
load takes well under a second.
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from .data import ImageData, pack_info, read_pack, user_cache_dir, write_pack
from .errors import CorruptPackError, CourseError, DataNotFoundError
from .pictures import as_channels, read_pictures

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
FOLDER_CACHE_FORMAT = 1  # bump when decoding changes, so old cached folder packs are not reused


class _Listing:
    """One listing of an image folder that reads every real folder once, so a link that loops is entered at most once.

    Links to folders are followed, because a class folder may well be a link to pictures kept elsewhere (a
    dataset assembled without copying); a link back to a folder that holds the root, a second way into a folder
    already listed, and a link that cannot be followed at all (one pointing at itself) are passed over and
    noted in ``skipped`` as (path relative to the root, why) for the loaders to report.
    """

    def __init__(self, root: Path):
        self.root, self.real_root = str(root), os.path.realpath(root)
        self.seen, self.skipped = {self.real_root}, []

    def _note(self, path: str, why: str) -> None:
        self.skipped.append((os.path.relpath(path, self.root), why))

    def enter(self, path: str) -> bool:
        """Return whether to read the folder at ``path``: not if that would read a real folder twice."""
        real = os.path.realpath(path)
        if self.real_root == real or self.real_root.startswith(real.rstrip(os.sep) + os.sep):
            self._note(path, f"a link back to {real}, which holds the folder")
        elif real in self.seen:
            self._note(path, f"leads to {real}, listed already")
        else:
            self.seen.add(real)
            return True
        return False

    def entries(self, folder: str) -> Iterator[tuple[os.DirEntry, str]]:
        """Yield (entry, "picture" or "folder") for ``folder``'s visible pictures and sub-folders, by name."""
        with os.scandir(folder) as found:
            listed = sorted(found, key=lambda e: e.name)  # a fixed order: which of two links to one folder wins
        for e in listed:
            if e.name.startswith("."):
                continue
            try:
                if e.name.lower().endswith(IMAGE_SUFFIXES) and e.is_file():
                    yield e, "picture"
                elif e.is_dir():
                    yield e, "folder"
            except OSError as err:  # a link to itself: [Errno 40] Too many levels of symbolic links
                self._note(e.path, f"cannot be followed: {err.strerror}")

    @staticmethod
    def row(e: os.DirEntry) -> tuple[str, int, int]:
        """Return a picture's (path, size, modification time in ns), those of the file a link leads to."""
        st = e.stat()
        return e.path, st.st_size, st.st_mtime_ns

    def pictures(self, folder: str) -> list[tuple[str, int, int]]:
        """Return the rows of the picture files in ``folder`` and its sub-folders, sorted by path."""
        found, todo = [], [folder]
        while todo:
            for e, kind in self.entries(todo.pop()):
                if kind == "picture":
                    found.append(self.row(e))
                elif self.enter(e.path):
                    todo.append(e.path)
        return sorted(found)


def _find_pictures(root: Path) -> tuple[list[str], list, list[tuple[str, str]]]:
    """Return (class names, signature, skipped links) of a folder: one sub-folder per class, or flat (one class).

    The signature lists every picture's relative path, label, size and modification time: it
    changes whenever a picture is added, removed, renamed, moved to another class or edited.
    (No Path objects here: an unchanged folder is loaded from its cache after this one listing.)
    """
    if not root.is_dir():
        raise DataNotFoundError(f"Image folder {root} does not exist. Give the folder that holds your pictures, "
                                "either directly (one class) or in one sub-folder per class (root/cat/001.jpg, ...).")
    listing = _Listing(root)
    top = list(listing.entries(str(root)))
    # every class folder is claimed before any is read, so a link from one class into another is not followed
    classes = [e.name for e, kind in top if kind == "folder" and listing.enter(e.path)]
    found = [(path, label, size, mtime) for label, c in enumerate(classes)
             for path, size, mtime in listing.pictures(str(root / c))]
    loose = sorted(listing.row(e) for e, kind in top if kind == "picture")
    if loose and not found:  # a flat folder of pictures, as most people keep them: one class
        classes, found = [root.name], [(path, 0, size, mtime) for path, size, mtime in loose]
    elif loose:
        warnings.warn(f"Ignored {len(loose)} picture(s) directly in {root} (e.g. {Path(loose[0][0]).name}): with "
                      "class sub-folders present, every picture must be in one of them.", stacklevel=3)
    if not found:
        others = sorted({f.suffix.lower() for f in root.rglob("*") if f.is_file() and f.suffix})
        hint = ""
        if {".heic", ".heif"} & set(others):
            hint = (" It holds .heic/.heif files (iPhone photos), which Pillow cannot read: export them as "
                    "JPEG, or install the pillow-heif package and convert them.")
        elif others:
            hint = f" It holds files ending in {', '.join(others[:6])}."
        raise DataNotFoundError(f"No images found in {root}. Expected pictures (files ending in "
                                f"{', '.join(IMAGE_SUFFIXES)}) in it or in one sub-folder per class.{hint}")
    prefix = len(str(root)) + 1
    return classes, [(path[prefix:], label, size, mtime) for path, label, size, mtime in found], sorted(listing.skipped)


def _files(root: Path, signature: list) -> list[tuple[Path, int]]:
    """Return [(file, label)] of a folder's signature."""
    return [(root / relative, label) for relative, label, _, _ in signature]


def folder_cache_path(path: str | Path, image_size: int = 64, channels: int | str = "auto",
                      small: str = "error", on_error: str = "skip") -> Path:
    """Return where ``load_image_folder`` caches this folder as a pack (it changes when any picture does)."""
    root = Path(path).expanduser()
    _, signature, _ = _find_pictures(root)
    return _cache_file(root, signature, {"image_size": image_size, "channels": channels, "small": small,
                                         "on_error": on_error})


def _cache_file(root: Path, signature: list, settings: dict) -> Path:
    """Return the cache pack's path: named by the folder, a key of its path and settings, and a key of its contents."""
    import hashlib
    settings = {**settings, "format": FOLDER_CACHE_FORMAT}
    where = hashlib.sha256(json.dumps([str(root.resolve()), settings], sort_keys=True).encode()).hexdigest()[:12]
    contents = hashlib.sha256(json.dumps(signature).encode()).hexdigest()[:16]
    name = "".join(c if c.isalnum() or c in "-_" else "_" for c in root.resolve().name)[:40] or "folder"
    return user_cache_dir() / "folders" / f"{name}-{where}-{contents}.npz"


def load_image_folder(path: str | Path, image_size: int = 64, on_error: str = "skip", *,
                      channels: int | str = "auto", small: str = "error", cache: bool = True,
                      workers: int | None = None, progress: bool = True) -> ImageData:
    """Load your own pictures, resized and cropped: one sub-folder per class, or a flat folder (one class).

    Each picture's shorter side is resized to ``image_size`` and the centre square is kept.
    ``channels``: ``"auto"`` (1 if every picture is grey, 3 if every one is colour; a folder mixing
    both raises and asks you to choose), ``3`` or ``1``. Transparent pixels become white, palette
    and 16-bit pictures are converted, phone photos are turned upright. ``small``: what to do with
    pictures whose shorter side is below ``image_size``: ``"error"``, ``"skip"`` or ``"upscale"``.
    ``on_error``: ``"skip"`` unreadable files (with a warning) or ``"raise"``. With ``cache`` the
    result is kept as a pack in the user cache (`folder_cache_path`), keyed by the folder's contents
    (names, sizes, modification times), so the next load of an unchanged folder takes a fraction of
    a second. Large folders are read by several threads (``workers``; 1 reads in this thread).
    """
    root = Path(path).expanduser()
    if image_size <= 0:
        raise CourseError(f"image_size must be positive, got {image_size}.")
    if channels not in ("auto", 1, 3):
        raise CourseError(f"channels must be 'auto', 1 (grey) or 3 (colour), got {channels!r}.")
    if small not in ("error", "skip", "upscale"):
        raise CourseError(f"small must be 'error', 'skip' or 'upscale', got {small!r}.")
    if on_error not in ("skip", "raise"):
        raise CourseError(f"on_error must be 'skip' or 'raise', got {on_error!r}.")
    classes, signature, links = _find_pictures(root)
    settings = {"image_size": image_size, "channels": channels, "small": small, "on_error": on_error}
    target = _cache_file(root, signature, settings) if cache else None
    if target is not None and target.is_file():
        try:
            data, info = read_pack(target), pack_info(target)
            _warn_dropped(root, info, links, stacklevel=3)
            return dataclasses.replace(data, name=root.name, split="all")
        except CorruptPackError:
            target.unlink(missing_ok=True)  # a damaged cache is rebuilt, not reported
    files = _files(root, signature)
    pictures = read_pictures([f for f, _ in files], image_size, workers, f"reading {root.name}", progress)

    bad = [(f, p.error) for (f, _), p in zip(files, pictures) if p.array is None]
    if bad and on_error == "raise":
        raise CourseError(f"Cannot read image {bad[0][0]}: {bad[0][1]}. Remove or fix it, or pass on_error='skip'.")
    if len(bad) == len(files):
        raise CourseError(
            f"None of the {len(files)} image files in {root} could be read (e.g. {bad[0][0].name}: {bad[0][1]}). "
            "They may be unfinished downloads, files renamed to an image ending that are not images, or a "
            "format Pillow cannot decode. Open one in an image viewer; re-download or re-export them as JPEG or PNG.")
    good = [(f, label, p) for (f, label), p in zip(files, pictures) if p.array is not None]
    tiny = [(f, p) for f, _, p in good if min(p.width, p.height) < image_size]
    if tiny and small == "error":
        smallest = min(min(p.width, p.height) for _, p in tiny)
        fits = max(8, smallest // 8 * 8)
        f, p = tiny[0]
        raise CourseError(
            f"{len(tiny)} of {len(good)} pictures in {root} are smaller than image_size={image_size} on their "
            f"shorter side (e.g. {f.name}: {p.width}x{p.height}; the smallest is {smallest} pixels). Enlarging "
            f"them would only blur them. Load with image_size={fits} (a multiple of 8 that fits every picture), "
            "pass small='skip' to leave them out, or small='upscale' to enlarge them anyway.")
    if small == "skip":
        good = [g for g in good if min(g[2].width, g[2].height) >= image_size]
        if not good:
            raise CourseError(f"Every picture in {root} is smaller than image_size={image_size}, so small='skip' "
                              "left none. Use a smaller image_size.")
    greys = [f for f, _, p in good if p.grey]
    colours = [f for f, _, p in good if not p.grey]
    if channels == "auto":
        if greys and colours:
            raise CourseError(
                f"{root} mixes {len(greys)} grey and {len(colours)} colour pictures (e.g. grey: {greys[0].name}, "
                f"colour: {colours[0].name}). A model takes one kind. Pass channels=3 to load every picture in "
                "colour (a grey one is copied into red, green and blue) or channels=1 to load every picture grey.")
        channels = 1 if greys else 3
    images = np.stack([as_channels(p.array, channels) for _, _, p in good])
    labels = np.asarray([label for _, label, _ in good], dtype=np.int64)
    info = {"unreadable": [str(f) for f, _ in bad], "too_small": len(tiny) if small == "skip" else 0,
            "upscaled": len(tiny) if small == "upscale" else 0, "grey": len(greys), "colour": len(colours),
            "transparent": sum(p.alpha for _, _, p in good)}
    _warn_dropped(root, info, links, stacklevel=3)
    if target is not None:
        for old in target.parent.glob(target.name.rsplit("-", 1)[0] + "-*.npz"):
            old.unlink(missing_ok=True)  # the same folder's pack from before a change
        try:
            write_pack(target, images, labels, classes, info=info)
        except OSError as e:
            warnings.warn(f"Could not cache {root} as a pack at {target} ({e}); the next load will read the "
                          "pictures again.", stacklevel=2)
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return ImageData(tensor, torch.from_numpy(labels), classes, root.name, "all")


def _warn_dropped(root: Path, info: dict, links: list[tuple[str, str]], stacklevel: int) -> None:
    """Warn about what a load left out: unreadable files, pictures too small, links not followed (``links``)."""
    bad = info.get("unreadable", [])
    if bad:
        warnings.warn(f"Skipped {len(bad)} unreadable file(s) in {root}, e.g. {bad[0]}.", stacklevel=stacklevel)
    if links:  # from this load's listing, not the cache's info: a link removed since is not reported
        warnings.warn(f"Skipped {len(links)} symbolic link(s) in {root} that loop or lead to a folder listed "
                      f"already, e.g. {links[0][0]} ({links[0][1]}); every picture was read once, through one path.",
                      stacklevel=stacklevel)
    if info.get("too_small"):
        warnings.warn(f"Skipped {info['too_small']} picture(s) in {root} smaller than image_size (small='skip').",
                      stacklevel=stacklevel)


def inspect_image_folder(path: str | Path, image_size: int | None = None):
    """Return a table of a folder's pictures before loading it: class, format, mode, size, grey or colour, problems.

    One row per picture file; ``problem`` names what ``load_image_folder`` would object to
    (an unreadable file, or, with ``image_size``, a picture smaller than that). A symbolic link
    it does not follow (one that loops) gets a row too, with the reason.
    """
    import pandas as pd

    root = Path(path).expanduser()
    classes, signature, links = _find_pictures(root)
    files = _files(root, signature)
    pictures = read_pictures([f for f, _ in files], 8, desc=f"inspecting {root.name}")
    rows = []
    for (f, label), p in zip(files, pictures):
        problem = f"unreadable ({p.error})" if p.array is None else ""
        if not problem and image_size is not None and min(p.width, p.height) < image_size:
            problem = f"smaller than image_size={image_size}"
        rows.append({"file": str(f.relative_to(root)), "class": classes[label], "format": p.format,
                     "mode": p.mode, "width": p.width, "height": p.height,
                     "kind": "" if p.array is None else "grey" if p.grey else "colour",
                     "transparent": p.alpha, "problem": problem})
    for file, why in links:
        rows.append({"file": file, "class": "", "format": "", "mode": "", "width": 0, "height": 0, "kind": "",
                     "transparent": False, "problem": f"skipped link ({why})"})
    return pd.DataFrame(rows)


def read_photos(path: str | Path, max_side: int | None = None, channels: int = 3) -> dict[str, torch.Tensor]:
    """Read a folder's pictures at full size (or shrunk so the longer side is ``max_side``): {file name: (C, H, W)}.

    For cutting patches (`random_patches`) out of large photos; unreadable files are skipped with a warning.
    """
    from PIL import Image
    if channels not in (1, 3):
        raise CourseError(f"channels must be 1 (grey) or 3 (colour), got {channels!r}.")
    if max_side is not None and max_side <= 0:
        raise CourseError(f"max_side must be positive, got {max_side}.")
    root = Path(path).expanduser()
    _, signature, links = _find_pictures(root)
    files = _files(root, signature)
    photos, bad = {}, []
    for (f, _), p in zip(files, read_pictures([f for f, _ in files], None, desc=f"reading {root.name}")):
        if p.array is None:
            bad.append(f)
            continue
        array = as_channels(p.array, channels)
        if max_side is not None and max(array.shape[:2]) > max_side:
            h, w = array.shape[:2]
            scale = max_side / max(h, w)
            im = Image.fromarray(array[..., 0] if channels == 1 else array)
            array = np.asarray(im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.BILINEAR))
            array = array[..., None] if array.ndim == 2 else array
        photos[str(f.relative_to(root))] = torch.from_numpy(np.array(array)).permute(2, 0, 1).contiguous()
    _warn_dropped(root, {"unreadable": [str(f) for f in bad]}, links, stacklevel=3)
    if not photos:
        raise CourseError(f"None of the {len(files)} image files in {root} could be read.")
    return photos


def random_patches(photos: Mapping[str, torch.Tensor] | Sequence[torch.Tensor], patch_size: int, per_photo: int,
                   seed: int = 0) -> ImageData:
    """Cut ``per_photo`` random ``patch_size`` x ``patch_size`` squares out of each photo: many training images from few.

    ``photos`` are uint8 (C, H, W) tensors of any size (e.g. from `read_photos`). Each patch's
    label is the index of the photo it came from, and ``classes`` holds the photos' names, so
    a split by photo keeps the patches of a held-out photo out of training.
    """
    named = dict(photos) if isinstance(photos, Mapping) else {f"photo {i}": p for i, p in enumerate(photos)}
    if not named:
        raise CourseError("random_patches needs at least one photo.")
    if patch_size <= 0 or per_photo <= 0:
        raise CourseError(f"patch_size and per_photo must be positive, got {patch_size} and {per_photo}.")
    shapes = {name: tuple(p.shape) for name, p in named.items()}
    if len({s[0] for s in shapes.values()}) != 1 or any(len(s) != 3 for s in shapes.values()):
        raise CourseError(f"All photos must be (C, H, W) tensors with the same number of channels, got {shapes}. "
                          "Read them with read_photos(path, channels=3).")
    small = {name: s[1:] for name, s in shapes.items() if min(s[1:]) < patch_size}
    if small:
        name, (h, w) = next(iter(small.items()))
        raise CourseError(f"{len(small)} photo(s) are smaller than a {patch_size}x{patch_size} patch (e.g. {name}: "
                          f"{w}x{h}). Use a smaller patch_size, or leave those photos out.")
    g = torch.Generator().manual_seed(seed)
    images, labels = [], []
    for label, photo in enumerate(named.values()):
        _, h, w = photo.shape
        tops = torch.randint(0, h - patch_size + 1, (per_photo,), generator=g)
        lefts = torch.randint(0, w - patch_size + 1, (per_photo,), generator=g)
        images += [photo[:, t:t + patch_size, l:l + patch_size] for t, l in zip(tops.tolist(), lefts.tolist())]
        labels += [label] * per_photo
    return ImageData(torch.stack(images).contiguous(), torch.tensor(labels, dtype=torch.int64), list(named),
                     "patches", "all")
