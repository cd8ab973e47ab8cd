"""vitlab.gallery on a fake tiny dataset: ranking, only errors, the disk cache, progress."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vitlab import create_model
from vitlab.data import CifarSplit
from vitlab.gallery import GalleryItem, misclassified_gallery
from vitlab.hub import model_config
from vitlab.models.vit import Attention

CLASSES = tuple(f"class{i}" for i in range(4))


class LookupModel(nn.Module):
    """Logits read from a table row chosen by the image's top-left red pixel (its id)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", table)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = (x[:, 0, 0, 0] * 255).round().long()  # mean 0, std 1: x = pixel / 255
        return self.table[ids]


def fake_split(count: int = 40, seed: int = 0) -> CifarSplit:
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
    images[:, 0, 0, 0] = torch.arange(count, dtype=torch.uint8)
    labels = torch.randint(0, len(CLASSES), (count,), generator=generator)
    return CifarSplit(images, labels, CLASSES)


def fake_config() -> dict:
    return {"model": "lookup", "model_args": {}, "mean": [0.0] * 3, "std": [1.0] * 3, "classes": list(CLASSES), "image_size": 32}


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "gallery"


def test_ranked_by_wrong_confidence_and_only_errors(cache):
    split = fake_split()
    table = torch.randn(len(split), len(CLASSES), generator=torch.Generator().manual_seed(1)) * 3
    probs = table.softmax(-1)
    confidence, predicted = probs.max(-1)
    wrong = [i for i in range(len(split)) if predicted[i] != split.labels[i]]
    expected = sorted(wrong, key=lambda i: -float(confidence[i]))

    items = misclassified_gallery(LookupModel(table), fake_config(), split, top_k=100, batch_size=7)
    assert [item.index for item in items] == expected
    for item in items:
        assert item.true_label == CLASSES[split.labels[item.index]]
        assert item.pred_label == CLASSES[predicted[item.index]] != item.true_label
        assert item.confidence == pytest.approx(float(confidence[item.index]), abs=1e-5)
    confidences = [item.confidence for item in items]
    assert confidences == sorted(confidences, reverse=True)
    assert items[0].caption == f"{items[0].true_label} → {items[0].pred_label} ({items[0].confidence:.2f})"

    top = misclassified_gallery(LookupModel(table), fake_config(), split, top_k=5)
    assert top == items[:5]


def test_cache_hit_on_second_call_and_progress(cache, monkeypatch):
    split = fake_split()
    model = LookupModel(torch.randn(len(split), len(CLASSES)))
    calls: list[float] = []
    first = misclassified_gallery(model, fake_config(), split, batch_size=10, progress=calls.append)
    assert calls == [0.0, 0.25, 0.5, 0.75, 1.0]
    files = list(cache.glob("*.json"))
    assert len(files) == 1 and json.loads(files[0].read_text())["errors"]

    import vitlab.gallery

    def fail(*args, **kwargs):
        raise AssertionError("recomputed despite a cached ranking")

    monkeypatch.setattr(vitlab.gallery, "rank_errors", fail)
    calls.clear()
    assert misclassified_gallery(model, fake_config(), split, progress=calls.append) == first
    assert calls == [1.0]

    retrained = LookupModel(model.table + 1.0)  # other weights: another key, so a miss
    with pytest.raises(AssertionError, match="recomputed"):
        misclassified_gallery(retrained, fake_config(), split)


def test_corrupt_cache_is_recomputed(cache):
    split = fake_split()
    model = LookupModel(torch.randn(len(split), len(CLASSES)))
    first = misclassified_gallery(model, fake_config(), split)
    (path,) = cache.glob("*.json")
    path.write_text("{not json")
    assert misclassified_gallery(model, fake_config(), split) == first


def test_class_mismatch_is_refused(cache):
    config = {**fake_config(), "classes": ["a", "b", "c", "d"]}
    with pytest.raises(ValueError, match="classes"):
        misclassified_gallery(LookupModel(torch.zeros(40, 4)), config, fake_split())


@pytest.mark.parametrize("name", ["ultimus", "vit_nano_convstem"])
def test_registry_models_agree_with_plain_inference(cache, name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=len(CLASSES)).eval()
    config = model_config(model, mean=(0.5,) * 3, std=(0.25,) * 3, classes=CLASSES, image_size=32)
    split = fake_split(24)
    items = misclassified_gallery(model, config, split, top_k=100, batch_size=10)
    with torch.inference_mode():
        x = (split.images.float() / 255 - 0.5) / 0.25
        confidence, predicted = model(x).softmax(-1).max(-1)
    expected = {i for i in range(len(split)) if predicted[i] != split.labels[i]}
    assert {item.index for item in items} == expected
    for item in items:
        assert isinstance(item, GalleryItem)
        assert item.confidence == pytest.approx(float(confidence[item.index]), abs=1e-4)
    assert not any(m.fused for m in model.modules() if isinstance(m, Attention))  # the shared model is untouched
    assert all(p.is_contiguous() for p in model.parameters())
