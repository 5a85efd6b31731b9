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
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .environment import Profile, in_colab
from .errors import CorruptPackError, CourseError, DataNotFoundError
from .files import atomic_write
from .pictures import as_channels, read_pictures

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


def pack_info(path: Path) -> dict:
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
        pictures = read_pictures(ds._image_files, DATASETS[name].image_size, desc=f"resizing flowers102/{split}")
        bad = next((p.error for p in pictures if p.array is None), None)
        if bad:
            raise CorruptPackError(f"A Flowers-102 image in {download_dir} cannot be read ({bad}). Delete that "
                                   "folder and load the dataset again to download it anew.")
        images = np.stack([as_channels(p.array, 3) for p in pictures])
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
