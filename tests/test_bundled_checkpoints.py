"""The checkpoints shipped in checkpoints/: they load, and their recorded accuracy reproduces."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vitlab import load_checkpoint
from vitlab.data import load_cifar10, normalize

CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"
BUNDLED = sorted(p for p in CHECKPOINTS.iterdir() if (p / "config.json").is_file()) if CHECKPOINTS.is_dir() else []


def test_the_app_defaults_are_bundled():
    assert {p.name for p in BUNDLED} >= {"ultimus", "vit_nano_convstem"}


@pytest.mark.parametrize("folder", BUNDLED, ids=[p.name for p in BUNDLED])
def test_bundled_checkpoint_loads_and_is_documented(folder):
    model, config = load_checkpoint(folder)
    assert config["model"] == folder.name and not model.training
    for name in ["README.md", "metrics.json", "history.csv", "curves.png", "confusion_matrix.png"]:
        assert (folder / name).is_file(), name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["test_images"] == 10_000 and metrics["epochs"] >= 1
    assert f"{metrics['test_accuracy']:.2f}%" in (folder / "README.md").read_text()


@pytest.mark.parametrize("folder", BUNDLED, ids=[p.name for p in BUNDLED])
def test_recorded_accuracy_reproduces_on_the_real_test_set(folder, real_data_root):
    model, config = load_checkpoint(folder)
    test = load_cifar10(real_data_root, split="test")
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(test), 1000):
            x = normalize(test.images[i : i + 1000], config["mean"], config["std"])
            correct += (model(x).argmax(1) == test.labels[i : i + 1000]).sum().item()
    accuracy = 100.0 * correct / len(test)
    recorded = json.loads((folder / "metrics.json").read_text())["test_accuracy"]
    assert accuracy == pytest.approx(recorded, abs=0.1)
