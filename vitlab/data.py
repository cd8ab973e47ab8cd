"""CIFAR-10: class names, mean/std, loading into uint8 tensors, batched augmentation.

Loading finds CIFAR-10 in either of two layouts and decodes it once into
``(N, 3, 32, 32)`` uint8 tensors, cached on disk as safetensors so later loads
take a fraction of a second:

- an ImageFolder tree, ``root/{train,test}/<class>/*.jpg`` (the project's copy in
  ``../shared/cifar10`` is this, re-encoded as JPEG quality 75);
- torchvision's download, ``root/cifar-10-batches-py/`` (the original pickled
  batches), which ``load_cifar10(download=True)`` fetches for users with internet.

Augmentation works on whole uint8 batches on whatever device they live on, with
tensor index arithmetic only (no per-image Python), and is reproducible from a
``torch.Generator``: random crop with padding, horizontal flip, cutout.

References:
- A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009;
  the batch format: https://www.cs.toronto.edu/~kriz/cifar.html
- torchvision ``torchvision/datasets/cifar.py`` (folder and file names, download).
- T. DeVries, G. Taylor, "Improved Regularization of Convolutional Neural
  Networks with Cutout", 2017, arXiv:1708.04552.
- K. Jordan, ``KellerJordan/cifar10-airbench``: the dataset as uint8 tensors on
  the training device, flip and crop as batched tensor ops.
- safetensors (https://github.com/huggingface/safetensors): the cache format,
  chosen because loading it cannot execute code, unlike pickle.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
# Per-channel statistics of the original train batches, the values the
# literature uses. The JPEG q75 copy in ../shared/cifar10 measures
# (0.4913, 0.4821, 0.4465) / (0.2452, 0.2428, 0.2606): close enough that one
# pair of constants serves both sources.
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
IMAGE_SIZE = 32

Split = Literal["train", "test"]
PaddingMode = Literal["zeros", "reflect"]
_ImageEntry = tuple[str, str, int, int]  # (class folder, file name, size in bytes, mtime_ns)

DATA_ENV = "VITLAB_DATA"
CACHE_ENV = "VITLAB_CACHE"
TORCHVISION_FOLDER = "cifar-10-batches-py"
_BATCH_FILES: dict[str, tuple[str, ...]] = {
    "train": tuple(f"data_batch_{i}" for i in range(1, 6)),
    "test": ("test_batch",),
}
_META_FILE = "batches.meta"
_IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".webp", ".tif", ".tiff"})
# Bump when the decoded content or the cache layout changes, so old caches are ignored.
_CACHE_VERSION = "1"


class DataNotFoundError(FileNotFoundError):
    """CIFAR-10 was found in none of the places looked at; ``tried`` lists them."""

    def __init__(self, message: str, tried: Sequence[Path]) -> None:
        super().__init__(message)
        self.tried = tuple(tried)


@dataclass(frozen=True)
class CifarSplit:
    """One split held in memory: the whole of it fits (50k images = 150 MiB)."""

    images: torch.Tensor  # (N, 3, 32, 32) uint8
    labels: torch.Tensor  # (N,) int64, indices into classes
    classes: tuple[str, ...] = CIFAR10_CLASSES

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, H, W), got {self.images.dtype} {tuple(self.images.shape)}")
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(f"labels must be int64 (N,), got {self.labels.dtype} {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device | str) -> CifarSplit:
        """The same split on ``device`` (still uint8: augment there, normalise per batch)."""
        return CifarSplit(self.images.to(device), self.labels.to(device), self.classes)


# ----------------------------------------------------------------------------
# Where things live


def _user_cache_home() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "vitlab"


def default_data_root() -> Path:
    """The data root used without ``root`` or ``VITLAB_DATA``; downloads go here."""
    return _user_cache_home() / "cifar10"


def default_cache_dir() -> Path:
    """Where decoded splits are cached: ``VITLAB_CACHE``, else the user cache dir."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else _user_cache_home() / "decoded"


def _data_root(root: str | os.PathLike | None) -> tuple[Path, str]:
    """The one root to search and how it was chosen (for the error message).

    An explicit choice (argument or VITLAB_DATA) never falls back to the default:
    a typo should fail loudly rather than silently read some other copy.
    """
    if root is not None:
        return Path(root).expanduser().absolute(), "root argument / --data"
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser().absolute(), f"${DATA_ENV}"
    return default_data_root().absolute(), "default location"


@dataclass(frozen=True)
class _Source:
    """A split found on disk: its format and the folder holding its files."""

    kind: Literal["image_folder", "torchvision"]
    path: Path  # root/<split> for image_folder, the batches folder for torchvision


def _find_source(data_root: Path, split: Split) -> tuple[_Source | None, list[Path]]:
    """Look for ``split`` under ``data_root`` in both formats; return it and the paths tried."""
    candidates = [
        _Source("image_folder", data_root / split),
        _Source("torchvision", data_root / TORCHVISION_FOLDER),
        _Source("torchvision", data_root),  # root is the batches folder itself
    ]
    tried = []
    for source in candidates:
        tried.append(source.path)
        if source.kind == "image_folder" and source.path.is_dir():
            return source, tried
        if source.kind == "torchvision" and all((source.path / name).is_file() for name in _BATCH_FILES[split]):
            return source, tried
    return None, tried


def _not_found_message(split: Split, data_root: Path, chosen_by: str, tried: Sequence[Path]) -> str:
    looked = "\n".join(f"  - {path}" for path in tried)
    return (
        f"CIFAR-10 {split} split not found under {data_root} ({chosen_by}). Looked for:\n"
        f"{looked}\n"
        f"(an ImageFolder tree {split}/<class>/*.jpg, "
        f"or torchvision's {TORCHVISION_FOLDER}/{_BATCH_FILES[split][0]}).\n"
        "To fix, do one of:\n"
        f"  - set {DATA_ENV} to the folder holding train/ and test/ (e.g. ../shared/cifar10) "
        f"or {TORCHVISION_FOLDER}/;\n"
        "  - pass --data PATH to the training CLI, or load_cifar10(root=PATH);\n"
        f"  - download it with torchvision (needs internet): load_cifar10(download=True) saves to {data_root}."
    )


# ----------------------------------------------------------------------------
# Decoding


def pil_to_uint8_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL image as a (3, H, W) uint8 RGB tensor (no resizing, no scaling)."""
    array = np.array(image.convert("RGB"))  # a writable copy, which torch can own
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in _IMAGE_EXTENSIONS  # not Path(): 60k of them cost 0.2 s


def _list_image_folder(folder: Path) -> list[_ImageEntry]:
    """(class, file name, size, mtime_ns) per image, sorted by class then name.

    Checks that the class folders are exactly CIFAR10_CLASSES: folders sort
    alphabetically, which is CIFAR's index order, so a folder's rank is its label.
    """
    classes = sorted(entry.name for entry in os.scandir(folder) if entry.is_dir() and not entry.name.startswith("."))
    if tuple(classes) != CIFAR10_CLASSES:
        raise ValueError(f"{folder} has class folders {classes}, expected the CIFAR-10 classes {list(CIFAR10_CLASSES)}")
    files = []
    for name in classes:
        with os.scandir(folder / name) as entries:
            images = [e for e in entries if not e.name.startswith(".") and _is_image_name(e.name)]
        for entry in sorted(images, key=lambda e: e.name):
            stat = entry.stat()
            files.append((name, entry.name, stat.st_size, stat.st_mtime_ns))
    if not files:
        raise ValueError(f"{folder} has the CIFAR-10 class folders but no images in them")
    return files


def _decode_image_folder(folder: Path, files: Sequence[_ImageEntry]) -> CifarSplit:
    """Decode every listed image with PIL into one uint8 tensor.

    A tight single-threaded loop: at 32x32 the per-image Python overhead dominates
    the JPEG decode, and threads measured slower (GIL contention), ~70 us/image.
    """
    images = np.empty((len(files), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)  # (N, H, W, C), as PIL gives it
    class_index = {name: i for i, name in enumerate(CIFAR10_CLASSES)}
    labels = np.fromiter((class_index[name] for name, *_ in files), dtype=np.int64, count=len(files))
    for i, (class_name, file_name, *_) in enumerate(files):
        path = folder / class_name / file_name
        with Image.open(path) as image:
            if image.size != (IMAGE_SIZE, IMAGE_SIZE):
                width, height = image.size
                raise ValueError(f"{path} is {width}x{height}, CIFAR-10 images are {IMAGE_SIZE}x{IMAGE_SIZE}")
            images[i] = np.asarray(image.convert("RGB"))
    return CifarSplit(torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels))


class _CifarBatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batches only: a pickle may run any callable it names, so
    allow just the numpy array constructors these files need (and ``_codecs.encode``,
    which Python 3 uses for bytes in protocol-2 pickles)."""

    _ALLOWED = frozenset({
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    })

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return super().find_class(module, name)


def _read_batch_file(path: Path) -> dict[str, object]:
    """One pickled batch as a dict with str keys (py2 files give str, py3 ones bytes)."""
    with open(path, "rb") as file:
        # latin1, as torchvision does: the originals are Python 2 pickles.
        entry = _CifarBatchUnpickler(file, encoding="latin1").load()
    return {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}


def _batch_files(folder: Path, split: Split) -> list[Path]:
    names = _BATCH_FILES[split] + ((_META_FILE,) if (folder / _META_FILE).is_file() else ())
    return [folder / name for name in names]


def _decode_torchvision(folder: Path, split: Split) -> CifarSplit:
    """Read torchvision's ``cifar-10-batches-py``: rows of 3072 bytes, R then G then B planes."""
    meta_path = folder / _META_FILE
    if meta_path.is_file():
        names = tuple(_read_batch_file(meta_path)["label_names"])
        names = tuple(n.decode() if isinstance(n, bytes) else n for n in names)
        if names != CIFAR10_CLASSES:
            raise ValueError(f"{meta_path} lists classes {list(names)}, expected {list(CIFAR10_CLASSES)}")
    images, labels = [], []
    for name in _BATCH_FILES[split]:
        entry = _read_batch_file(folder / name)
        images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE))
        labels.append(np.asarray(entry["labels"], dtype=np.int64))
    return CifarSplit(torch.from_numpy(np.concatenate(images)), torch.from_numpy(np.concatenate(labels)))


def _download(data_root: Path, split: Split) -> None:
    """Fetch the original batches with torchvision (checks the archive's md5)."""
    # Imported here: only this path needs torchvision.datasets, and it is slow to import.
    from torchvision import datasets

    data_root.mkdir(parents=True, exist_ok=True)
    datasets.CIFAR10(str(data_root), train=split == "train", download=True)


# ----------------------------------------------------------------------------
# The decoded cache


def _digest(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _cache_file(cache_dir: Path, source: _Source, split: Split, fingerprint: str) -> Path:
    """``cifar10-<split>-<source path hash>-<content hash>.safetensors``.

    The source-path part lets a rebuild delete the stale file for the same source.
    """
    return cache_dir / f"cifar10-{split}-{_digest(str(source.path))[:10]}-{_digest(fingerprint)[:20]}.safetensors"


def _fingerprint(source: _Source, split: Split, listing: Sequence[tuple[str, int, int]]) -> str:
    """Everything that, if changed, makes the cached tensors stale: format version,
    source path, and each file's relative path, size and mtime."""
    lines = [_CACHE_VERSION, source.kind, str(source.path), split]
    lines += [f"{relative}\0{size}\0{mtime_ns}" for relative, size, mtime_ns in listing]
    return "\n".join(lines)


def _listing(source: _Source, split: Split, files: Sequence[_ImageEntry] | None) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime_ns) of every file the split is read from."""
    if files is not None:
        return [(f"{name}/{file_name}", size, mtime_ns) for name, file_name, size, mtime_ns in files]
    stats = [(path.name, path.stat()) for path in _batch_files(source.path, split)]
    return [(name, stat.st_size, stat.st_mtime_ns) for name, stat in stats]


def _read_cache(path: Path, expected_count: int | None) -> CifarSplit | None:
    """The cached split, or None if absent or unreadable (it is then rebuilt)."""
    if not path.is_file():
        return None
    try:
        # load_file maps the file privately: pages are read on first use (~0.1 s for
        # the train split) and shared through the page cache by processes on one
        # machine. Safe because a cache file is only ever replaced or unlinked,
        # never rewritten in place.
        tensors = load_file(path)
        split = CifarSplit(tensors["images"], tensors["labels"])
        if split.images.shape[1:] != (3, IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(f"cached images have shape {tuple(split.images.shape)}")
        if expected_count is not None and len(split) != expected_count:
            raise ValueError(f"cache holds {len(split)} images, the source {expected_count}")
    except (SafetensorError, OSError, KeyError, ValueError, RuntimeError) as error:
        warnings.warn(f"ignoring unreadable CIFAR-10 cache {path} ({error}); decoding again", stacklevel=3)
        return None
    return split


def _write_cache(path: Path, split: CifarSplit, source: _Source) -> None:
    """Write atomically (temp file + rename) so a crash or a concurrent reader never
    sees half a file; a cache that cannot be written only costs speed, so warn."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}-", suffix=".tmp")
        os.close(descriptor)
        os.chmod(temporary, 0o644)  # mkstemp makes it 0600; a shared VITLAB_CACHE should stay readable
        try:
            save_file(
                {"images": split.images.contiguous(), "labels": split.labels.contiguous()},
                temporary,
                metadata={"format": "vitlab-cifar10", "version": _CACHE_VERSION, "source": str(source.path),
                          "classes": ",".join(split.classes)},
            )
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _remove_stale_caches(path)
    except (OSError, SafetensorError) as error:
        warnings.warn(f"could not write the CIFAR-10 cache {path} ({error}); continuing without it", stacklevel=3)


def _remove_stale_caches(current: Path) -> None:
    """Delete older caches of the same split and source: each is 150 MiB."""
    prefix = current.name.rsplit("-", 1)[0] + "-"
    for old in current.parent.glob(f"{prefix}*.safetensors"):
        if old != current:
            old.unlink(missing_ok=True)


# ----------------------------------------------------------------------------
# Loading


def load_cifar10(
    root: str | os.PathLike | None = None,
    *,
    split: Split = "train",
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> CifarSplit:
    """Load one CIFAR-10 split as uint8 tensors on the CPU.

    The data root is ``root``, else ``$VITLAB_DATA``, else ``default_data_root()``;
    in it, either ``<split>/<class>/*`` (ImageFolder) or torchvision's
    ``cifar-10-batches-py`` (also accepted as the root itself). ``download=True``
    fetches the latter there when neither is found. The decoded split is cached in
    ``cache_dir`` (default ``default_cache_dir()``), keyed on every source file's
    path, size and mtime, so an edited source is decoded again.

    Raises DataNotFoundError (a FileNotFoundError) naming every place looked at.
    """
    if split not in _BATCH_FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    data_root, chosen_by = _data_root(root)
    source, tried = _find_source(data_root, split)
    if source is None and download:
        _download(data_root, split)
        source, tried = _find_source(data_root, split)
    if source is None:
        raise DataNotFoundError(_not_found_message(split, data_root, chosen_by, tried), tried)

    # Listing the files (one stat each, ~0.15 s for 50k) is what keys the cache.
    files = _list_image_folder(source.path) if source.kind == "image_folder" else None
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    cache = _cache_file(cache_root, source, split, _fingerprint(source, split, _listing(source, split, files)))
    cached = _read_cache(cache, len(files) if files is not None else None)
    if cached is not None:
        return cached
    if files is not None:
        decoded = _decode_image_folder(source.path, files)
    else:
        decoded = _decode_torchvision(source.path, split)
    _write_cache(cache, decoded, source)
    return decoded


# ----------------------------------------------------------------------------
# Batches


def iterate_batches(
    split: CifarSplit,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` batches: uint8 (B, 3, H, W) and int64 (B,), on the split's device.

    Shuffling draws one permutation per call (per epoch) from ``generator``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    count = len(split)
    stop = count - count % batch_size if drop_last else count
    order = _random_permutation(count, generator, split.images.device) if shuffle else None
    for start in range(0, stop, batch_size):
        if order is None:
            yield split.images[start:start + batch_size], split.labels[start:start + batch_size]
        else:
            index = order[start:start + batch_size]
            yield split.images[index], split.labels[index]


def shard(split: CifarSplit, rank: int, world_size: int) -> CifarSplit:
    """The part of ``split`` that process ``rank`` of ``world_size`` trains on (DDP).

    Strided, not contiguous: loaded splits are sorted by class, so contiguous shards
    would give each rank only a few classes. Every rank gets the same number of
    images (the last ``len % world_size`` are dropped, as DistributedSampler's
    drop_last does) so that all ranks run the same number of steps.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    index = slice(rank, len(split) // world_size * world_size, world_size)
    return CifarSplit(split.images[index], split.labels[index], split.classes)


# ----------------------------------------------------------------------------
# Batched augmentation
#
# Random numbers are drawn where the generator lives (the CPU unless a CUDA
# generator is passed), then moved to the images' device: torch refuses a
# generator on another device, and drawing on the CPU makes one seed give the
# same augmentation on every device. The draws are B numbers, so the copy is cheap.


def _generator_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _random_integers(high: int, count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """``count`` integers uniform in [0, high), on ``device``."""
    return torch.randint(high, (count,), generator=generator, device=_generator_device(generator)).to(device)


def _random_uniform(count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(count, generator=generator, device=_generator_device(generator)).to(device)


def _random_permutation(count: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.randperm(count, generator=generator, device=_generator_device(generator)).to(device)


def _check_batch(images: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"expected a batch (B, C, H, W), got shape {tuple(images.shape)}")


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Mirror out-of-range indices without repeating the edge, like F.pad(mode="reflect")."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def _gather_pixels(images: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """``out[b, c, i, j] = images[b, c, rows[b, i], cols[b, j]]`` for (B, H) rows and (B, W) cols."""
    batch, channels = images.shape[:2]
    b = torch.arange(batch, device=images.device).view(-1, 1, 1, 1)
    c = torch.arange(channels, device=images.device).view(1, -1, 1, 1)
    return images[b, c, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def random_crop(
    images: torch.Tensor,
    padding: int = 4,
    *,
    padding_mode: PaddingMode = "zeros",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pad each image by ``padding`` and crop back to its size at a random offset.

    Same result as torchvision's RandomCrop(size, padding) per image, done for the
    whole batch by gathering shifted indices (the padded batch is never built).
    ``padding=0`` returns ``images`` itself.
    """
    _check_batch(images)
    if padding == 0:
        return images
    batch, _, height, width = images.shape
    if padding_mode not in ("zeros", "reflect"):
        raise ValueError(f"padding_mode must be 'zeros' or 'reflect', got {padding_mode!r}")
    if padding_mode == "reflect" and padding >= min(height, width):
        raise ValueError(f"reflect padding must be smaller than the image, got {padding} for {height}x{width}")
    device = images.device
    shift_y = _random_integers(2 * padding + 1, batch, generator, device) - padding  # in [-padding, padding]
    shift_x = _random_integers(2 * padding + 1, batch, generator, device) - padding
    rows = torch.arange(height, device=device) + shift_y[:, None]  # (B, H) source row of each output row
    cols = torch.arange(width, device=device) + shift_x[:, None]  # (B, W)
    if padding_mode == "reflect":
        return _gather_pixels(images, _reflect(rows, height), _reflect(cols, width))
    inside = ((rows >= 0) & (rows < height))[:, :, None] & ((cols >= 0) & (cols < width))[:, None, :]  # (B, H, W)
    cropped = _gather_pixels(images, rows.clamp(0, height - 1), cols.clamp(0, width - 1))
    return cropped.masked_fill(~inside[:, None], 0)


def random_horizontal_flip(
    images: torch.Tensor, p: float = 0.5, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Mirror each image left-right with probability ``p``."""
    _check_batch(images)
    flip = _random_uniform(images.shape[0], generator, images.device) < p
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def cutout(images: torch.Tensor, size: int = 8, *, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square per image, centred uniformly over the image
    and clipped at its borders (DeVries & Taylor 2017). ``size=0`` changes nothing."""
    _check_batch(images)
    batch, _, height, width = images.shape
    device = images.device
    # The centre is uniform over the whole image, so squares near a border get clipped.
    top = _random_integers(height, batch, generator, device) - size // 2  # (B,) first zeroed row
    left = _random_integers(width, batch, generator, device) - size // 2  # (B,) first zeroed column
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + size)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + size)  # (B, W)
    return images.masked_fill((in_rows[:, :, None] & in_cols[:, None, :])[:, None], 0)


@dataclass(frozen=True)
class BatchAugment:
    """Crop, then flip, then cutout, on a uint8 batch; each step off when 0/False."""

    crop_padding: int = 4  # pixels padded on each side before the random crop
    crop_padding_mode: PaddingMode = "zeros"  # "reflect" avoids black borders
    flip: bool = True  # random horizontal flip, p = 0.5
    cutout_size: int = 0  # side of the zeroed square in pixels; 8 is the CIFAR-10 value in the paper

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.crop_padding:
            images = random_crop(images, self.crop_padding, padding_mode=self.crop_padding_mode, generator=generator)
        if self.flip:
            images = random_horizontal_flip(images, generator=generator)
        if self.cutout_size:
            images = cutout(images, self.cutout_size, generator=generator)
        return images


def normalize(
    images: torch.Tensor,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    *,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (..., C, H, W) to ``(x / 255 - mean) / std`` in ``dtype``, on the same device."""
    # Computed in at least float32: 255 * mean in bfloat16 would be off by up to 0.5.
    compute = torch.promote_types(dtype, torch.float32)
    mean_255 = torch.tensor(mean, dtype=compute, device=images.device).view(-1, 1, 1) * 255
    std_255 = torch.tensor(std, dtype=compute, device=images.device).view(-1, 1, 1) * 255
    return ((images.to(compute) - mean_255) / std_255).to(dtype)
