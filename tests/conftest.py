"""Fixtures shared by vitlab's tests."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def real_data_root() -> Path:
    """The real CIFAR-10: ``$VITLAB_DATA``, else ``../shared/cifar10`` beside the repo.

    Skips when it is missing, except on CI (``CI=true``), where a missing dataset
    must fail: a skipped real-data test would pass unnoticed.
    """
    env = os.environ.get("VITLAB_DATA")
    root = Path(env).expanduser() if env else REPO_ROOT.parent / "shared" / "cifar10"
    if root.is_dir():
        return root
    message = f"real CIFAR-10 not found at {root}; set VITLAB_DATA to run the real-data tests"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def write_tiny_cifar_folder(root: Path, train_per_class: int = 20, test_per_class: int = 10, seed: int = 0) -> Path:
    """A generated CIFAR-10-shaped ImageFolder tree (never real CIFAR-10 pixels).

    Each class has its own mean colour plus noise, so a model can learn it a little.
    """
    import numpy as np
    from PIL import Image

    from vitlab.data import CIFAR10_CLASSES

    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for label, name in enumerate(CIFAR10_CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            colour = np.array([(label * 25) % 256, (label * 70) % 256, (255 - label * 25) % 256], dtype=np.float64)
            for i in range(count):
                pixels = np.clip(colour + rng.normal(0, 40, (32, 32, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:04d}.png")
    return root


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory) -> Path:
    return write_tiny_cifar_folder(tmp_path_factory.mktemp("tiny-cifar"))
