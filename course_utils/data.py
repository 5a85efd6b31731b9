"""Load image datasets as uint8 tensors, offline first, and iterate over them fast.

Every dataset is resolved in the same order:

1. a *pack* ``<data root>/<name>/<split>.npz`` (uint8 NHWC ``images``, int64 ``labels``,
   str ``classes``), the data root being ``$COURSE_DATA_DIR``, else the repository's
   ``data/`` folder, else a user cache folder;
2. a system copy (Debian's ``dataset-fashion-mnist`` package);
3. torchvision's downloader.

After 2 or 3 the loader writes a pack, so the next load takes well under a second.
"""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .environment import Profile, in_colab
from .errors import CorruptPackError, CourseError, DataNotFoundError
from .files import atomic_write

PACK_FORMAT = 1
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
REPO_DATA_DIR = Path(__file__).resolve().parent.parent / "data"

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the course knows about one named dataset."""

    splits: tuple[str, ...]
    image_size: int  # side of the square images the pack stores


DATASETS: dict[str, DatasetInfo] = {
    "fashion-mnist": DatasetInfo(("train", "test"), 28),  # Zalando's grey clothing images
    "cifar10": DatasetInfo(("train", "test"), 32),  # colour photos in 10 classes
    "stl10": DatasetInfo(("train", "test"), 96),  # colour photos (the labelled splits)
    "flowers102": DatasetInfo(("train", "val", "test"), 64),  # Oxford flowers, resized and centre-cropped
}


# --------------------------------------------------------------------------- containers
@dataclasses.dataclass
class ImageData:
    """A dataset split held as tensors: uint8 images (N, C, H, W), int64 labels, class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    split: str = ""

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """Return (channels, height, width) of one image."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, n: int | None, seed: int = 0) -> "ImageData":
        """Return a random subset of ``n`` images (all of them when ``n`` is None or larger)."""
        if n is None or n >= len(self):
            return self
        if n <= 0:
            raise CourseError(f"A subset needs at least one image, got n={n}.")
        g = torch.Generator().manual_seed(seed)
        idx = torch.randperm(len(self), generator=g)[:n].sort().values
        return ImageData(self.images[idx], self.labels[idx], self.classes, self.name, self.split)

    def split_off(self, n: int, seed: int = 0) -> tuple["ImageData", "ImageData"]:
        """Return (the rest, ``n`` held-out images): a fixed random split by ``seed``, the two parts disjoint."""
        if not 0 < n < len(self):
            raise CourseError(f"Can hold out between 1 and {len(self) - 1} of {len(self)} images, got n={n}.")
        order = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        pick = lambda idx: ImageData(self.images[idx], self.labels[idx], self.classes, self.name, self.split)
        return pick(order[n:].sort().values), pick(order[:n].sort().values)

    def to(self, device: torch.device | str) -> "ImageData":
        """Return the same data on ``device`` (still uint8: 4x less memory than float)."""
        return ImageData(self.images.to(device), self.labels.to(device), self.classes, self.name, self.split)

    def floats(self, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
        """Return all images as float32 in ``value_range``."""
        return to_float(self.images, value_range)

    def __repr__(self) -> str:
        return (f"ImageData({self.name or 'images'}/{self.split or '?'}: {len(self)} images of "
                f"{'x'.join(map(str, self.image_shape))}, {len(self.classes)} classes)")


VALIDATION_IMAGES = 5_000  # held out of a training split to choose settings; the test split is for final numbers


def validation_split(train: ImageData, n_val: int = VALIDATION_IMAGES, seed: int = 0) -> tuple[ImageData, ImageData]:
    """Return (train, validation): ``n_val`` images held out of a training split, the same ones every time.

    Choose models and settings on the validation part; touch the test split only for final numbers.
    """
    rest, val = train.split_off(min(n_val, len(train) // 5), seed=seed)  # at most a fifth of a small split
    val.split = f"{train.split or 'train'}/validation"
    return rest, val


def to_float(images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Convert uint8 images to float32 scaled to ``value_range``; float images are taken as scaled already.

    The one uint8 => float conversion of the course (its inverse is `to_uint8`), in one
    vectorised step. Float input comes back as float32, unchanged otherwise (never modified in place).
    """
    if images.dtype != torch.uint8:
        return images.float()
    low, high = value_range
    x = images.float()
    return x.mul_((high - low) / 255.0).add_(low) if (low, high) != (0.0, 1.0) else x.div_(255.0)


def to_uint8(images: torch.Tensor, value_range: tuple[float, float] = (0.0, 1.0)) -> torch.Tensor:
    """Convert float images in ``value_range`` back to uint8 (clamped and rounded)."""
    low, high = value_range
    x = (images.detach().float() - low) * (255.0 / (high - low))
    return x.clamp_(0, 255).round_().to(torch.uint8)


def flip_half(batch: torch.Tensor) -> torch.Tensor:
    """Mirror the first half of a shuffled batch left to right: whole-batch augmentation on the device.

    ``fit`` shuffles every epoch, so the first half is a fresh random half of the images each time
    and no random numbers are drawn (a resumed run sees the same flips). A photo and its mirror
    image are equally likely, so this doubles the pictures an autoencoder learns from; pass it as
    ``fit(..., augment=flip_half)``. Not for pictures whose left and right differ (text, digits).
    """
    half = batch.shape[0] // 2
    return torch.cat([batch[:half].flip(-1), batch[half:]]) if half else batch


# --------------------------------------------------------------------------- roots
def user_cache_dir() -> Path:
    """Return the per-user cache folder used when no repository ``data/`` folder exists."""
    if in_colab():
        return Path("/content/course_data")
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "course_utils"


def data_root() -> Path:
    """Return the data root: $COURSE_DATA_DIR, else the repository's data/, else a user cache."""
    env = os.environ.get("COURSE_DATA_DIR")
    if env:
        root = Path(env).expanduser()
        if not root.exists():
            raise DataNotFoundError(
                f"COURSE_DATA_DIR points at {root}, which does not exist. Create the folder, "
                "fix the path, or unset COURSE_DATA_DIR to use the default data folder.")
        if not root.is_dir():
            raise CourseError(f"COURSE_DATA_DIR points at {root}, which is a file, not a folder. "
                              "Point it at the folder that holds <dataset>/<split>.npz packs.")
        if not os.access(root, os.R_OK | os.X_OK):
            raise CourseError(f"COURSE_DATA_DIR points at {root}, which this user cannot read. "
                              f"Fix its permissions (chmod u+rx {root}) or point it elsewhere.")
        return root
    if (REPO_DATA_DIR / "README.md").is_file():
        return REPO_DATA_DIR
    return user_cache_dir()


def _writable_root() -> Path:
    """Return where new packs and downloads go: the data root if writable, else the user cache."""
    root = data_root()
    try:
        root.mkdir(parents=True, exist_ok=True)
        # root ignores permission bits, so also honour a folder laid out read-only (no write bits)
        if os.access(root, os.W_OK) and root.stat().st_mode & 0o222:
            return root
    except OSError:
        pass
    return user_cache_dir()


def pack_path(name: str, split: str, root: Path | None = None) -> Path:
    """Return where the pack for ``name``/``split`` lives under ``root`` (default: the data root)."""
    return (root or data_root()) / name / f"{split}.npz"


def _candidate_packs(name: str, split: str) -> list[Path]:
    paths = [pack_path(name, split), pack_path(name, split, user_cache_dir())]
    return list(dict.fromkeys(paths))


# --------------------------------------------------------------------------- packs
def _checksum(images: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(images)).cast("B"))


def write_pack(path: Path | str, images: np.ndarray, labels: np.ndarray, classes: Sequence[str],
               info: dict | None = None) -> Path:
    """Write a pack atomically (temporary file, then rename) with shape and checksum metadata (and ``info``)."""
    path = Path(path)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.asarray(labels, dtype=np.int64)
    _validate_arrays(path, images, labels)
    meta = {"format": PACK_FORMAT, "shape": list(images.shape), "count": int(images.shape[0]),
            "crc32": _checksum(images)}
    if info:
        meta["info"] = info
    with atomic_write(path) as f:
        np.savez(f, images=images, labels=labels, classes=np.asarray(list(classes), dtype=str),
                 meta=np.asarray(json.dumps(meta)))
    return path


def _validate_arrays(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise CorruptPackError(
            f"Pack {path} has images of dtype {images.dtype} and shape {images.shape}; expected "
            "uint8 (N, H, W, C) with C = 1 or 3. Rebuild it: delete the file and load the dataset again.")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise CorruptPackError(
            f"Pack {path} has labels of dtype {labels.dtype} and shape {labels.shape} for "
            f"{images.shape[0]} images; expected int64 (N,). Rebuild it: delete the file and load again.")


def read_pack(path: Path | str) -> ImageData:
    """Read and verify a pack; raise CorruptPackError naming the file if anything is off."""
    path = Path(path)
    rebuild = "Delete it and load the dataset again to rebuild it (or copy a good pack there)."
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = {"images", "labels", "classes"} - set(z.files)
            if missing:
                raise CorruptPackError(f"Pack {path} lacks the array(s) {sorted(missing)}. {rebuild}")
            images, labels, classes = z["images"], z["labels"], z["classes"]
            meta = json.loads(str(z["meta"])) if "meta" in z.files else None
    except CorruptPackError:
        raise
    except (zipfile.BadZipFile, EOFError, ValueError, OSError, KeyError, json.JSONDecodeError) as e:
        raise CorruptPackError(f"Pack {path} is truncated or corrupt ({type(e).__name__}: {e}). {rebuild}") from e
    _validate_arrays(path, images, labels)
    if meta is not None:
        if list(images.shape) != meta.get("shape") or _checksum(images) != meta.get("crc32"):
            raise CorruptPackError(f"Pack {path} fails its shape/checksum check. {rebuild}")
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    return ImageData(tensor, torch.from_numpy(labels.astype(np.int64)), [str(c) for c in classes],
                     path.parent.name, path.stem)


def _pack_info(path: Path) -> dict:
    """Return the ``info`` dict a pack was written with (empty if none)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["meta"])).get("info", {}) if "meta" in z.files else {}


# --------------------------------------------------------------------------- sources
def _read_idx(path: Path) -> np.ndarray:
    """Read a (gzipped) idx file: big-endian header then raw uint8 values."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CorruptPackError(f"{path} is not a uint8 idx file. Reinstall it (apt-get install --reinstall "
                               "dataset-fashion-mnist) or delete it.")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise CorruptPackError(f"{path} is truncated: header says {tuple(dims)}, found {data.size} values.")
    return data.reshape(tuple(int(d) for d in dims)).copy()  # writable, owned by numpy


def _system_copy_files(name: str, split: str) -> tuple[Path, Path] | None:
    """Return the (images, labels) files of Debian's package for ``name``/``split``, if installed."""
    if name != "fashion-mnist":
        return None
    prefix = "train" if split == "train" else "t10k"
    base = SYSTEM_FASHION_MNIST_DIR
    img, lab = base / f"{prefix}-images-idx3-ubyte.gz", base / f"{prefix}-labels-idx1-ubyte.gz"
    return (img, lab) if img.is_file() and lab.is_file() else None


def _from_system_copy(name: str, split: str) -> tuple[np.ndarray, np.ndarray, list[str]] | None:
    """Return arrays from Debian's dataset package, or None if it is not installed."""
    files = _system_copy_files(name, split)
    if files is None:
        return None
    return _read_idx(files[0])[..., None], _read_idx(files[1]).astype(np.int64), list(FASHION_MNIST_CLASSES)


def local_copy(name: str, split: str) -> Path | None:
    """Return where ``name``/``split`` would be loaded from without a download (a pack or system copy), or None."""
    key = _check_name(name, split)
    pack = next((p for p in _candidate_packs(key, split) if p.is_file()), None)
    files = _system_copy_files(key, split)
    return pack or (files[0] if files else None)


def _from_torchvision(name: str, split: str, download_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Download with torchvision into ``download_dir`` and return arrays (may raise network errors)."""
    import torchvision.datasets as tvd

    train = split == "train"
    if name == "fashion-mnist":
        ds = tvd.FashionMNIST(download_dir, train=train, download=True)
        return ds.data.numpy()[..., None], ds.targets.numpy().astype(np.int64), list(ds.classes)
    if name == "cifar10":
        ds = tvd.CIFAR10(download_dir, train=train, download=True)
        return np.asarray(ds.data), np.asarray(ds.targets, dtype=np.int64), list(ds.classes)
    if name == "stl10":
        ds = tvd.STL10(download_dir, split=split, download=True)
        return ds.data.transpose(0, 2, 3, 1).copy(), ds.labels.astype(np.int64), list(ds.classes)
    if name == "flowers102":
        ds = tvd.Flowers102(download_dir, split=split, download=True)
        pictures = _read_pictures(ds._image_files, DATASETS[name].image_size, desc=f"resizing flowers102/{split}")
        bad = next((p.error for p in pictures if p.array is None), None)
        if bad:
            raise CorruptPackError(f"A Flowers-102 image in {download_dir} cannot be read ({bad}). Delete that "
                                   "folder and load the dataset again to download it anew.")
        images = np.stack([_as_channels(p.array, 3) for p in pictures])
        labels = np.asarray(ds._labels, dtype=np.int64)
        classes = list(getattr(ds, "classes", [])) or [f"flower {i}" for i in range(102)]
        return images, labels, classes
    raise AssertionError(name)


def _check_name(name: str, split: str) -> str:
    key = name.strip().lower().replace("_", "-")
    key = {"fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "stl-10": "stl10",
           "flowers-102": "flowers102"}.get(key, key)
    if key not in DATASETS:
        raise CourseError(f"Unknown dataset {name!r}. Known datasets: {', '.join(DATASETS)}; "
                          "for your own pictures use load_image_folder(path).")
    if split not in DATASETS[key].splits:
        raise CourseError(f"Dataset {key!r} has no split {split!r}; choose one of "
                          f"{', '.join(DATASETS[key].splits)}.")
    return key


def resize_images(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Resize a uint8 (N, C, H, W) tensor to ``size`` x ``size`` with antialiasing, in chunks."""
    if size <= 0:
        raise CourseError(f"image_size must be positive, got {size}.")
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = [F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear",
                         antialias=True, align_corners=False).round_().clamp_(0, 255).to(torch.uint8)
           for i in range(0, images.shape[0], chunk)]
    return torch.cat(out)


def load_dataset(name: str, split: str = "train", image_size: int | None = None, download: bool = True,
                 profile: Profile | None = None) -> ImageData:
    """Load a dataset split as uint8 tensors: from a pack, a system copy, or a download.

    With ``profile``, return the profile's share of the split: ``profile.take(...)`` images
    (its train size for the train split, its test size for the others), the same random subset
    (seed 0) every time, so every chapter that asks gets the same images.
    """
    key = _check_name(name, split)
    data: ImageData | None = None
    for path in _candidate_packs(key, split):
        if path.is_file():
            data = read_pack(path)
            break
    if data is None:
        arrays = _from_system_copy(key, split)
        if arrays is None and download:
            target = _writable_root()
            try:
                arrays = _from_torchvision(key, split, target / key / "raw")
            except Exception as e:  # torchvision raises URLError, RuntimeError, OSError... when offline
                raise _offline_error(key, split, e) from e
        if arrays is None:
            raise _offline_error(key, split, None)
        images, labels, classes = arrays
        dest = pack_path(key, split, _writable_root())
        try:
            write_pack(dest, images, labels, classes)
        except OSError as e:
            warnings.warn(f"Could not cache {key}/{split} as a pack at {dest} ({e}); "
                          "the next load will be slower.", stacklevel=2)
        data = ImageData(torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous(),
                         torch.from_numpy(labels), classes, key, split)
    data.name, data.split = key, split
    if profile is not None:
        data = data.subset(profile.take(len(data), "train" if split == "train" else "test"), seed=0)
    if image_size is not None:
        data = dataclasses.replace(data, images=resize_images(data.images, image_size))
    return data


def _offline_error(name: str, split: str, cause: Exception | None) -> DataNotFoundError:
    why = f" (the download failed: {type(cause).__name__}: {cause})" if cause else ""
    debian = ("\n  2. on Debian/Ubuntu, install the offline copy: "
              "sudo apt-get install dataset-fashion-mnist" if name == "fashion-mnist" else
              "\n  2. (no system package exists for this dataset; use 1 or 3)")
    return DataNotFoundError(
        f"No local copy of {name}/{split} was found and it could not be downloaded{why}. Fix it by one of:"
        f"\n  1. putting a pack at {pack_path(name, split)} (uint8 NHWC 'images', int64 'labels', "
        "str 'classes'), or pointing COURSE_DATA_DIR at a folder holding <name>/<split>.npz;"
        f"{debian}"
        "\n  3. connecting to the internet once: the loader then downloads it and keeps a pack.")


# --------------------------------------------------------------------------- own images
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")  # PIL modes that store one grey value
FOLDER_CACHE_FORMAT = 1  # bump when decoding changes, so old cached folder packs are not reused
PARALLEL_FROM = 1_000  # folders with at least this many pictures are read by several threads


@dataclasses.dataclass
class _Picture:
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


def _read_picture(path: Path, image_size: int | None) -> _Picture:
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
        return _Picture(None, error=f"{type(e).__name__}: {e}")
    return _Picture(array[..., None] if array.ndim == 2 else array, width, height, mode, grey, alpha, fmt)


def default_workers(n_files: int) -> int:
    """Return how many threads read a folder of ``n_files`` pictures: up to 4 (one per core) from PARALLEL_FROM files."""
    return min(4, os.cpu_count() or 1) if n_files >= PARALLEL_FROM else 1


def _read_pictures(paths: Sequence[Path], image_size: int | None, workers: int | None = None,
                   desc: str = "reading pictures", progress: bool = True) -> list[_Picture]:
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
                out.append(_read_picture(p, image_size))
                bar.update(1)
            return out
        from concurrent.futures import ThreadPoolExecutor
        chunk = max(16, min(256, len(paths) // (8 * workers) or 1))

        def read_chunk(part: Sequence[Path]) -> list[_Picture]:
            got = [_read_picture(p, image_size) for p in part]
            bar.update(len(part))
            return got

        with ThreadPoolExecutor(workers) as pool:
            parts = pool.map(read_chunk, [paths[i:i + chunk] for i in range(0, len(paths), chunk)])
            return [picture for part in parts for picture in part]


def _grey_of(rgb: np.ndarray) -> np.ndarray:
    """Convert (..., 3) uint8 RGB to (..., 1) grey exactly as Pillow's convert("L") does (ITU-R 601-2 luma)."""
    r, g, b = (rgb[..., i].astype(np.uint32) for i in range(3))
    return ((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16).astype(np.uint8)[..., None]


def _as_channels(array: np.ndarray, channels: int) -> np.ndarray:
    if array.shape[-1] == channels:
        return array
    return np.repeat(array, 3, axis=-1) if channels == 3 else _grey_of(array)


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
            data, info = read_pack(target), _pack_info(target)
            _warn_dropped(root, info, links, stacklevel=3)
            return dataclasses.replace(data, name=root.name, split="all")
        except CorruptPackError:
            target.unlink(missing_ok=True)  # a damaged cache is rebuilt, not reported
    files = _files(root, signature)
    pictures = _read_pictures([f for f, _ in files], image_size, workers, f"reading {root.name}", progress)

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
    images = np.stack([_as_channels(p.array, channels) for _, _, p in good])
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
    pictures = _read_pictures([f for f, _ in files], 8, desc=f"inspecting {root.name}")
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
    for (f, _), p in zip(files, _read_pictures([f for f, _ in files], None, desc=f"reading {root.name}")):
        if p.array is None:
            bad.append(f)
            continue
        array = _as_channels(p.array, channels)
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


# --------------------------------------------------------------------------- data that does not fit on the device
class UInt8Images(Dataset):
    """A Dataset of uint8 images (C, H, W), one at a time, from ImageData or a NumPy array (N, H, W, C).

    The array may be memory-mapped (``np.load("images.npy", mmap_mode="r")``): each DataLoader
    worker then reads only the images its process asks for, so the data never has to fit in
    memory, let alone on the device. Images stay uint8 (4x fewer bytes than float32) until
    `fit` decodes the batch on the device.
    """

    def __init__(self, data: ImageData | np.ndarray | torch.Tensor):
        if isinstance(data, ImageData):
            data = data.images
        if data.dtype not in (np.uint8, torch.uint8) or data.ndim != 4:
            raise CourseError(f"UInt8Images expects uint8 images, (N, C, H, W) as a tensor or (N, H, W, C) as a "
                              f"NumPy array, got {data.dtype} {tuple(data.shape)}.")
        self.data, self.channels_last_array = data, isinstance(data, np.ndarray)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        if self.channels_last_array:
            return torch.from_numpy(np.array(self.data[i])).permute(2, 0, 1)  # a copy read from disk; HxWxC => CxHxW
        return self.data[i]


# --------------------------------------------------------------------------- iteration
class DeviceBatches:
    """Iterate over float batches of images that stay as uint8 on the training device.

    Shuffling happens on the device with a generator seeded by (seed, epoch), so epoch ``e``
    always visits the same order: a resumed run can replay it exactly.
    """

    def __init__(self, data: ImageData | torch.Tensor, batch_size: int, device: torch.device | str | None = None,
                 shuffle: bool = True, value_range: tuple[float, float] = (0.0, 1.0), drop_last: bool = False,
                 seed: int = 0, channels_last: bool = False, with_labels: bool = False):
        images = data.images if isinstance(data, ImageData) else data
        labels = data.labels if isinstance(data, ImageData) else torch.zeros(len(images), dtype=torch.int64)
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise CourseError(f"DeviceBatches expects uint8 images of shape (N, C, H, W), got "
                              f"{images.dtype} {tuple(images.shape)}. Use load_dataset(...) to get them.")
        n = images.shape[0]
        if batch_size <= 0:
            raise CourseError(f"batch_size must be positive, got {batch_size}.")
        if batch_size > n:
            raise CourseError(f"Batch size {batch_size} is larger than the dataset ({n} images). "
                              f"Use a batch size of at most {n}, or more data (a larger profile or subset).")
        device = torch.device(device) if device is not None else images.device
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size, self.shuffle, self.value_range = batch_size, shuffle, value_range
        self.drop_last, self.seed, self.channels_last, self.with_labels = drop_last, seed, channels_last, with_labels
        self.device = device
        self.epoch = 0

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self, epoch: int) -> torch.Tensor:
        """Return the sample order of ``epoch`` (a permutation when shuffling)."""
        n = self.images.shape[0]
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        g = torch.Generator(device=self.device)
        g.manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(n, generator=g, device=self.device)

    def batches(self, epoch: int, start: int = 0) -> Iterator:
        """Yield the batches of ``epoch``, beginning with batch number ``start``."""
        order = self.order(epoch)
        for b in range(start, len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x = to_float(self.images[idx], self.value_range)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield (x, self.labels[idx]) if self.with_labels else x

    def __iter__(self) -> Iterator:
        epoch, self.epoch = self.epoch, self.epoch + 1
        return self.batches(epoch)


class ImageDataset(Dataset):
    """The standard map-style Dataset over ImageData: returns (image, label) one at a time.

    With ``as_pil=True`` each image is a PIL image passed through ``transform`` (the
    torchvision style most tutorials use); otherwise a float tensor in ``value_range``.
    """

    def __init__(self, data: ImageData, transform=None, as_pil: bool = False,
                 value_range: tuple[float, float] = (0.0, 1.0)):
        self.data, self.transform, self.as_pil, self.value_range = data, transform, as_pil, value_range
        self._hwc = data.images.permute(0, 2, 3, 1).numpy() if as_pil else None

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        label = int(self.data.labels[i])
        if self.as_pil:
            from PIL import Image
            arr = self._hwc[i]
            image = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
        else:
            image = to_float(self.data.images[i], self.value_range)
        return (self.transform(image) if self.transform else image), label
