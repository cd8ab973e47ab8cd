"""Tests for vitlab.data: loading both on-disk formats, the decoded cache, the
not-found error, batched augmentation, batching and sharding.

Fixtures are generated here (random 32x32 images, CIFAR-format pickles); the real
dataset is read only by the tests that make claims about it.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors.torch import load_file

from vitlab import data
from vitlab.data import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    BatchAugment,
    CifarSplit,
    DataNotFoundError,
    cutout,
    iterate_batches,
    load_cifar10,
    normalize,
    pil_to_uint8_tensor,
    random_crop,
    random_horizontal_flip,
    shard,
)

PER_CLASS = {"train": 3, "test": 2}
DEVICES = ["cpu", "meta"] + (["cuda"] if torch.cuda.is_available() else [])


# ----------------------------------------------------------------------------
# Generated fixtures


def random_images(count: int, seed: int) -> np.ndarray:
    """(N, 32, 32, 3) uint8 noise: every pixel differs, so any mix-up shows."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, 32, 32, 3), dtype=np.uint8)


def write_image_folder(root: Path, extension: str = "png", seed: int = 0) -> dict[str, CifarSplit]:
    """root/{train,test}/<class>/NNNN.<extension>; returns what loading should give."""
    expected = {}
    for offset, (split, per_class) in enumerate(PER_CLASS.items()):
        pixels = random_images(per_class * len(CIFAR10_CLASSES), seed + offset)
        for index, array in enumerate(pixels):
            folder = root / split / CIFAR10_CLASSES[index // per_class]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / f"{index % per_class:04d}.{extension}")
        labels = torch.arange(len(CIFAR10_CLASSES)).repeat_interleave(per_class)
        expected[split] = CifarSplit(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), labels)
    return expected


def legacy_pickle(entry: dict) -> bytes:
    """Protocol 2 with numpy 1's module name, as in the files torchvision downloads
    (Python 2 pickles naming numpy.core.multiarray._reconstruct)."""
    return pickle.dumps(entry, protocol=2).replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


def write_batches(folder: Path, per_batch: int = 4, seed: int = 0) -> dict[str, CifarSplit]:
    """torchvision's cifar-10-batches-py in the original format: pickled dicts with
    b"data" (N, 3072) uint8 rows of R, G, B planes and b"labels" a list of ints."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    chunks: dict[str, list[tuple[np.ndarray, list[int]]]] = {"train": [], "test": []}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        rows = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=per_batch)]
        entry = {b"batch_label": name.encode(), b"labels": labels, b"data": rows,
                 b"filenames": [f"{name}_{i}.png".encode() for i in range(per_batch)]}
        (folder / name).write_bytes(legacy_pickle(entry))
        chunks["test" if name == "test_batch" else "train"].append((rows, labels))
    meta = {b"num_cases_per_batch": per_batch, b"label_names": [c.encode() for c in CIFAR10_CLASSES], b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(legacy_pickle(meta))
    return {
        split: CifarSplit(
            torch.from_numpy(np.concatenate([rows for rows, _ in parts])).view(-1, 3, 32, 32),
            torch.tensor([label for _, labels in parts for label in labels]),
        )
        for split, parts in chunks.items()
    }


def assert_same_split(actual: CifarSplit, expected: CifarSplit) -> None:
    assert actual.images.dtype == torch.uint8 and actual.labels.dtype == torch.int64
    assert actual.classes == CIFAR10_CLASSES
    torch.testing.assert_close(actual.images, expected.images, rtol=0, atol=0)
    torch.testing.assert_close(actual.labels, expected.labels, rtol=0, atol=0)


def cache_files(cache_dir: Path) -> list[Path]:
    return sorted(cache_dir.glob("*.safetensors"))


# ----------------------------------------------------------------------------
# Loading


@pytest.mark.parametrize("split", ["train", "test"])
def test_image_folder_png_round_trips_exactly(tmp_path: Path, split: str) -> None:
    expected = write_image_folder(tmp_path / "cifar")
    loaded = load_cifar10(tmp_path / "cifar", split=split, cache_dir=tmp_path / "cache")
    assert loaded.images.shape == (10 * PER_CLASS[split], 3, 32, 32)
    assert torch.bincount(loaded.labels, minlength=10).tolist() == [PER_CLASS[split]] * 10
    assert_same_split(loaded, expected[split])


def test_image_folder_jpeg_decodes_like_pil(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "cifar", extension="jpg")
    loaded = load_cifar10(tmp_path / "cifar", split="test", cache_dir=tmp_path / "cache")
    with Image.open(tmp_path / "cifar" / "test" / "bird" / "0001.jpg") as image:
        reference = pil_to_uint8_tensor(image)
    assert torch.equal(loaded.images[2 * 2 + 1], reference)


@pytest.mark.parametrize("nested", [True, False], ids=["root-holds-batches-folder", "root-is-batches-folder"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_torchvision_batches_round_trip_exactly(tmp_path: Path, split: str, nested: bool) -> None:
    expected = write_batches(tmp_path / "cifar" / "cifar-10-batches-py")
    root = tmp_path / "cifar" if nested else tmp_path / "cifar" / "cifar-10-batches-py"
    loaded = load_cifar10(root, split=split, cache_dir=tmp_path / "cache")
    assert loaded.images.shape == ((20 if split == "train" else 4), 3, 32, 32)
    assert_same_split(loaded, expected[split])


def test_batch_reader_refuses_arbitrary_pickled_callables(tmp_path: Path) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    write_batches(folder)
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": os.system, b"labels": []}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load_cifar10(folder, split="test", cache_dir=tmp_path / "cache")


def test_wrong_class_folders_are_rejected(tmp_path: Path) -> None:
    (tmp_path / "train" / "cats").mkdir(parents=True)
    with pytest.raises(ValueError, match="class folders"):
        load_cifar10(tmp_path, cache_dir=tmp_path / "cache")


def test_class_folders_without_images_are_rejected(tmp_path: Path) -> None:
    for name in CIFAR10_CLASSES:
        (tmp_path / "test" / name).mkdir(parents=True)
    with pytest.raises(ValueError, match="no images"):
        load_cifar10(tmp_path, split="test", cache_dir=tmp_path / "cache")


def test_unknown_split_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_cifar10(tmp_path, split="val")


def test_data_root_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = write_image_folder(tmp_path / "elsewhere")
    monkeypatch.setenv("VITLAB_DATA", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache-from-env"))
    assert_same_split(load_cifar10(split="test"), expected["test"])
    assert len(cache_files(tmp_path / "cache-from-env")) == 1


def test_default_locations_follow_xdg_cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITLAB_DATA", raising=False)
    monkeypatch.delenv("VITLAB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    expected = write_batches(tmp_path / "xdg" / "vitlab" / "cifar10" / "cifar-10-batches-py")
    assert_same_split(load_cifar10(split="test"), expected["test"])
    assert len(cache_files(tmp_path / "xdg" / "vitlab" / "decoded")) == 1


def test_missing_data_error_lists_every_location_tried(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataNotFoundError) as caught:
        load_cifar10(root, split="test", cache_dir=tmp_path / "cache")
    error = caught.value
    assert isinstance(error, FileNotFoundError)
    assert error.tried == (root / "test", root / "cifar-10-batches-py", root)
    message = str(error)
    for path in error.tried:
        assert f"- {path}\n" in message
    for fix in ("VITLAB_DATA", "--data", "download=True"):
        assert fix in message


def test_missing_data_error_names_the_default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VITLAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    with pytest.raises(DataNotFoundError, match="default location") as caught:
        load_cifar10(cache_dir=tmp_path / "cache")
    assert str(tmp_path / "xdg" / "vitlab" / "cifar10" / "train") in str(caught.value)


def test_download_goes_through_torchvision(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    expected = {}

    class FakeCIFAR10:
        """Stands in for the network: writes what torchvision's download extracts."""

        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            calls.append((Path(root), train, download))
            expected.update(write_batches(Path(root) / "cifar-10-batches-py"))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    loaded = load_cifar10(tmp_path / "fresh", split="test", download=True, cache_dir=tmp_path / "cache")
    assert calls == [(tmp_path / "fresh", False, True)]
    assert_same_split(loaded, expected["test"])


# ----------------------------------------------------------------------------
# The decoded cache


def forbid_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("decoded again although the cache was valid")

    monkeypatch.setattr(data, "_decode_image_folder", fail)
    monkeypatch.setattr(data, "_decode_torchvision", fail)


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    for name in ("_decode_image_folder", "_decode_torchvision"):
        original = getattr(data, name)

        def counted(*args: object, _original=original) -> CifarSplit:
            calls.append(1)
            return _original(*args)

        monkeypatch.setattr(data, name, counted)
    return calls


def test_second_load_comes_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected = write_image_folder(tmp_path / "cifar")
    load_cifar10(tmp_path / "cifar", cache_dir=tmp_path / "cache")
    assert len(cache_files(tmp_path / "cache")) == 1
    forbid_decoding(monkeypatch)
    assert_same_split(load_cifar10(tmp_path / "cifar", cache_dir=tmp_path / "cache"), expected["train"])


def test_replaced_image_invalidates_the_cache(tmp_path: Path) -> None:
    write_image_folder(tmp_path / "cifar")
    load_cifar10(tmp_path / "cifar", split="test", cache_dir=tmp_path / "cache")
    replacement = random_images(1, seed=99)[0]
    path = tmp_path / "cifar" / "test" / "cat" / "0001.png"
    Image.fromarray(replacement).save(path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # in case the clock is coarse
    loaded = load_cifar10(tmp_path / "cifar", split="test", cache_dir=tmp_path / "cache")
    assert torch.equal(loaded.images[3 * 2 + 1], torch.from_numpy(replacement).permute(2, 0, 1))
    assert len(cache_files(tmp_path / "cache")) == 1  # the stale file was removed


@pytest.mark.parametrize("source_format", ["image_folder", "torchvision"])
def test_touched_source_is_decoded_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source_format: str) -> None:
    if source_format == "image_folder":
        write_image_folder(tmp_path / "cifar")
        touched = tmp_path / "cifar" / "test" / "dog" / "0000.png"
    else:
        write_batches(tmp_path / "cifar" / "cifar-10-batches-py")
        touched = tmp_path / "cifar" / "cifar-10-batches-py" / "test_batch"
    decodes = count_decodes(monkeypatch)
    load_cifar10(tmp_path / "cifar", split="test", cache_dir=tmp_path / "cache")
    load_cifar10(tmp_path / "cifar", split="test", cache_dir=tmp_path / "cache")
    assert len(decodes) == 1
    stat = touched.stat()
    os.utime(touched, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_cifar10(tmp_path / "cifar", split="test", cache_dir=tmp_path / "cache")
    assert len(decodes) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_cache_is_decoded_again(tmp_path: Path, damage: str) -> None:
    expected = write_image_folder(tmp_path / "cifar")
    load_cifar10(tmp_path / "cifar", split="test", cache_dir=tmp_path / "cache")
    (cache,) = cache_files(tmp_path / "cache")
    content = cache.read_bytes()
    cache.write_bytes({"garbage": b"not a safetensors file" * 10, "truncated": content[: len(content) // 2],
                       "empty": b""}[damage])
    with pytest.warns(UserWarning, match="unreadable"):
        loaded = load_cifar10(tmp_path / "cifar", split="test", cache_dir=tmp_path / "cache")
    assert_same_split(loaded, expected["test"])
    assert cache_files(tmp_path / "cache") == [cache]  # rewritten in place: a valid cache again
    assert_same_split(CifarSplit(**load_file(cache)), expected["test"])


def test_unwritable_cache_only_warns(tmp_path: Path) -> None:
    expected = write_image_folder(tmp_path / "cifar")
    blocker = tmp_path / "a-file"
    blocker.write_text("a cache dir cannot be created inside a file")
    with pytest.warns(UserWarning, match="could not write"):
        loaded = load_cifar10(tmp_path / "cifar", split="test", cache_dir=blocker / "cache")
    assert_same_split(loaded, expected["test"])


# ----------------------------------------------------------------------------
# Batched augmentation


def image_batch(batch: int = 16, seed: int = 0, height: int = 32, width: int = 32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, 256, (batch, 3, height, width), generator=generator, dtype=torch.uint8)  # no zeros


AUGMENTATIONS = {
    "crop-zeros": lambda x, g: random_crop(x, 4, generator=g),
    "crop-reflect": lambda x, g: random_crop(x, 4, padding_mode="reflect", generator=g),
    "flip": lambda x, g: random_horizontal_flip(x, generator=g),
    "cutout": lambda x, g: cutout(x, 8, generator=g),
    "batch-augment": lambda x, g: BatchAugment(crop_padding=4, flip=True, cutout_size=8)(x, g),
}


@pytest.mark.parametrize("augment", AUGMENTATIONS.values(), ids=AUGMENTATIONS.keys())
def test_augmentation_keeps_shape_and_is_seeded(augment) -> None:
    images = image_batch(64)
    first = augment(images, torch.Generator().manual_seed(1))
    again = augment(images, torch.Generator().manual_seed(1))
    other = augment(images, torch.Generator().manual_seed(2))
    assert first.shape == images.shape and first.dtype == torch.uint8
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, images)


@pytest.mark.parametrize("augment", AUGMENTATIONS.values(), ids=AUGMENTATIONS.keys())
def test_augmentation_ignores_memory_layout(augment) -> None:
    images = image_batch(8).transpose(2, 3)  # a non-contiguous view
    assert not images.is_contiguous()
    expected = augment(images.contiguous(), torch.Generator().manual_seed(3))
    assert torch.equal(augment(images, torch.Generator().manual_seed(3)), expected)
    channels_last = images.contiguous(memory_format=torch.channels_last)
    assert torch.equal(augment(channels_last, torch.Generator().manual_seed(3)), expected)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("augment", AUGMENTATIONS.values(), ids=AUGMENTATIONS.keys())
def test_augmentation_runs_on_the_tensors_device_with_a_cpu_generator(augment, device: str) -> None:
    images = image_batch(8)
    on_device = augment(images.to(device), torch.Generator().manual_seed(4))
    assert on_device.device.type == device and on_device.shape == images.shape and on_device.dtype == torch.uint8
    if device != "meta":  # meta tensors hold no values to compare
        assert torch.equal(on_device.cpu(), augment(images, torch.Generator().manual_seed(4)))


def test_augmentation_without_generator_uses_the_global_seed() -> None:
    images = image_batch(32)
    augment = BatchAugment(cutout_size=8)
    torch.manual_seed(5)
    first = augment(images)
    torch.manual_seed(5)
    assert torch.equal(augment(images), first)


def test_crop_without_padding_is_identity() -> None:
    images = image_batch()
    assert torch.equal(random_crop(images, padding=0, generator=torch.Generator().manual_seed(0)), images)


@pytest.mark.parametrize("padding_mode", ["zeros", "reflect"])
def test_crop_equals_a_window_of_the_padded_image(padding_mode: str) -> None:
    padding = 3
    images = image_batch(16)
    cropped = random_crop(images, padding, padding_mode=padding_mode, generator=torch.Generator().manual_seed(6))
    padded = F.pad(images.float(), (padding,) * 4, mode="constant" if padding_mode == "zeros" else "reflect")
    offsets = set()
    for image, result in zip(padded, cropped.float()):
        matches = [(y, x) for y in range(2 * padding + 1) for x in range(2 * padding + 1)
                   if torch.equal(image[:, y:y + 32, x:x + 32], result)]
        assert matches, "the crop is no window of the padded image"
        offsets.update(matches)
    assert len(offsets) > 4  # offsets differ per image


def test_flip_mirrors_exactly_the_chosen_images() -> None:
    images = image_batch(64)
    assert torch.equal(random_horizontal_flip(images, p=1.0), images.flip(-1))
    assert torch.equal(random_horizontal_flip(images, p=0.0), images)
    flipped = random_horizontal_flip(images, generator=torch.Generator().manual_seed(7))
    mirrored = [bool(torch.equal(out, image.flip(-1))) for out, image in zip(flipped, images)]
    unchanged = [bool(torch.equal(out, image)) for out, image in zip(flipped, images)]
    assert all(m != u for m, u in zip(mirrored, unchanged))  # each image is one or the other
    assert 10 < sum(mirrored) < 54


def test_cutout_zeroes_one_clipped_square_per_image() -> None:
    size = 6
    images = image_batch(256)  # no zero pixels to begin with
    zeroed = cutout(images, size, generator=torch.Generator().manual_seed(8)) == 0  # (B, 3, H, W)
    assert torch.equal(zeroed[:, :1].expand_as(zeroed), zeroed)  # all channels alike
    interior = 0
    for mask in zeroed[:, 0]:
        rows, cols = mask.any(1).nonzero().flatten(), mask.any(0).nonzero().flatten()
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        assert mask.sum() == (bottom - top) * (right - left)  # a filled rectangle
        assert mask[top:bottom, left:right].all()
        assert bottom - top <= size and right - left <= size
        if top > 0 and left > 0 and bottom < 32 and right < 32:
            interior += 1
            assert bottom - top == size and right - left == size
    assert interior > 50
    assert torch.equal(cutout(images, 0), images)


def test_normalize_matches_torchvision() -> None:
    images = image_batch(4)
    expected = torchvision.transforms.functional.normalize(images.float() / 255, CIFAR10_MEAN, CIFAR10_STD)
    result = normalize(images)
    assert result.dtype == torch.float32
    torch.testing.assert_close(result, expected, rtol=1e-5, atol=1e-5)
    assert normalize(images.to("meta")).device.type == "meta"
    half = normalize(images, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half, expected.bfloat16())


# ----------------------------------------------------------------------------
# Batches and shards


def numbered_split(count: int) -> CifarSplit:
    """Image i is filled with the value i and labelled i: pairs stay checkable."""
    images = torch.arange(count, dtype=torch.uint8).view(-1, 1, 1, 1).expand(count, 3, 32, 32).contiguous()
    return CifarSplit(images, torch.arange(count))


def test_iterate_batches_in_order() -> None:
    batches = list(iterate_batches(numbered_split(10), 4, shuffle=False))
    assert [labels.tolist() for _, labels in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    dropped = iterate_batches(numbered_split(10), 4, shuffle=False, drop_last=True)
    assert [len(labels) for _, labels in dropped] == [4, 4]


def test_iterate_batches_shuffled_covers_everything_once() -> None:
    split = numbered_split(10)
    batches = list(iterate_batches(split, 4, shuffle=True, generator=torch.Generator().manual_seed(0)))
    assert [len(labels) for _, labels in batches] == [4, 4, 2]
    order = torch.cat([labels for _, labels in batches])
    assert sorted(order.tolist()) == list(range(10)) and order.tolist() != list(range(10))
    for images, labels in batches:
        assert torch.equal(images[:, 0, 0, 0].long(), labels)
    again = torch.cat([labels for _, labels in iterate_batches(split, 4, shuffle=True,
                                                               generator=torch.Generator().manual_seed(0))])
    assert torch.equal(order, again)


def test_shards_are_disjoint_equal_and_strided() -> None:
    split = numbered_split(23)
    shards = [shard(split, rank, 4) for rank in range(4)]
    assert [len(part) for part in shards] == [5, 5, 5, 5]
    assert shards[1].labels.tolist() == [1, 5, 9, 13, 17]
    assert len(set(torch.cat([part.labels for part in shards]).tolist())) == 20
    with pytest.raises(ValueError):
        shard(split, 4, 4)


def test_cifar_split_checks_its_tensors() -> None:
    with pytest.raises(ValueError, match="uint8"):
        CifarSplit(torch.zeros(2, 3, 32, 32), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        CifarSplit(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


# ----------------------------------------------------------------------------
# The real dataset


@pytest.mark.parametrize("split, per_class", [("train", 5000), ("test", 1000)])
def test_real_cifar10_has_the_official_split_sizes(real_data_root: Path, split: str, per_class: int) -> None:
    loaded = load_cifar10(real_data_root, split=split)
    assert loaded.images.shape == (10 * per_class, 3, 32, 32) and loaded.images.dtype == torch.uint8
    assert loaded.classes == CIFAR10_CLASSES
    assert torch.bincount(loaded.labels, minlength=10).tolist() == [per_class] * 10


def test_real_cifar10_statistics_match_the_constants(real_data_root: Path) -> None:
    images = load_cifar10(real_data_root, split="train").images
    # Exact per-channel moments from 256-bin histograms: 0.1 s, no float copy of the data.
    histogram = torch.stack([torch.bincount(images[:, c].flatten(), minlength=256) for c in range(3)]).double()
    values = torch.arange(256, dtype=torch.float64) / 255
    count = histogram.sum(1)
    mean = (histogram * values).sum(1) / count
    std = ((histogram * values**2).sum(1) / count - mean**2).sqrt()
    # The JPEG copy measures (0.4913, 0.4821, 0.4465) / (0.2452, 0.2428, 0.2606).
    torch.testing.assert_close(mean, torch.tensor(CIFAR10_MEAN, dtype=torch.float64), rtol=0, atol=2e-3)
    torch.testing.assert_close(std, torch.tensor(CIFAR10_STD, dtype=torch.float64), rtol=0, atol=3e-3)
