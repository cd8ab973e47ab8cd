"""The Gradio app in-process on a free port, driven through gradio_client.

Checkpoints are untrained models saved to a temp folder (plus broken ones), the
"CIFAR-10" test set is 30 generated images in a temp ImageFolder tree.
"""
from __future__ import annotations

import re
import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from vitlab import create_model, save_checkpoint
from vitlab.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from vitlab.hub import model_config
from vitlab.inference import checkpoint_sources, load_models, model_card

MODELS = ("ultimus", "vit_nano_convstem")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_checkpoints(root: Path) -> Path:
    for name in MODELS:
        torch.manual_seed(0)
        model = create_model(name)
        config = model_config(model, mean=CIFAR10_MEAN, std=CIFAR10_STD, classes=CIFAR10_CLASSES, image_size=32)
        save_checkpoint(model, root / name, config)
    folder = root / "vit_nano_convstem"
    (folder / "metrics.json").write_text(
        '{"test_accuracy": 61.5, "best_test_accuracy": 62.25, "per_class_accuracy": {"cat": 40.0, "dog": 55.5}}'
    )
    Image.new("RGB", (64, 48), (200, 10, 10)).save(folder / "curves.png")
    (root / "broken_json").mkdir()
    (root / "broken_json" / "config.json").write_text("{not json")
    (root / "no_weights").mkdir()
    (root / "no_weights" / "config.json").write_text((root / "ultimus" / "config.json").read_text())
    (root / "not_a_checkpoint").mkdir()  # no checkpoint files at all: ignored
    return root


def make_test_set(root: Path, per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    for name in CIFAR10_CLASSES:
        (root / "test" / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "test" / name / f"{i:04d}.png")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    import app

    tmp = tmp_path_factory.mktemp("app")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VITLAB_CACHE", str(tmp / "cache"))
        patch.delenv("VITLAB_MODELS", raising=False)
        demo = app.build_demo(checkpoints_dir=make_checkpoints(tmp / "checkpoints"), data_root=make_test_set(tmp / "data"))
        _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
        try:
            yield url, Client(url, verbose=False), tmp
        finally:
            demo.close()


def png(path: Path, size=(50, 40), seed=0) -> str:
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return str(path)


@pytest.mark.parametrize("model", MODELS)
def test_predict(server, model):
    _, client, tmp = server
    result = client.predict(handle_file(png(tmp / "p.png")), model, api_name="/predict")
    assert result["label"] in CIFAR10_CLASSES
    confidences = [c["confidence"] for c in result["confidences"]]
    assert len(confidences) == 5 and confidences == sorted(confidences, reverse=True)
    assert 0 < sum(confidences) <= 1 + 1e-6


@pytest.mark.parametrize(
    ("model", "method"), [("vit_nano_convstem", "gradcam"), ("vit_nano_convstem", "attention_rollout"), ("ultimus", "layercam")]
)
def test_explain(server, model, method):
    _, client, tmp = server
    overlay, scores = client.predict(handle_file(png(tmp / "e.png", seed=1)), model, method, "cat", api_name="/explain")
    with Image.open(overlay) as image:
        assert image.size == (224, 224) and image.mode == "RGB"
    assert scores["method"] == method and scores["target"] == "cat"
    for key in ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"):
        assert 0.0 <= scores[key] <= 1.0


def test_explain_panels(server):
    _, client, tmp = server
    label, view, cam, rollout, grad_rollout, maps, scores = client.predict(
        handle_file(png(tmp / "panels.png", seed=2)), "vit_nano_convstem", "gradcam", "predicted", 0.5,
        api_name="/explain_panels",
    )
    assert label["label"] in CIFAR10_CLASSES
    assert rollout["visible"] and grad_rollout["visible"] and not maps["visible"]  # updates: token model
    for path in (view, cam, rollout["value"], grad_rollout["value"]):
        with Image.open(path) as image:
            assert image.size == (224, 224)
    assert "gradient_rollout" in scores and "random" in scores

    *_, rollout, _, maps, scores = client.predict(
        handle_file(png(tmp / "panels.png", seed=2)), "ultimus", "gradcam", "dog", 0.5, api_name="/explain_panels"
    )
    assert not rollout["visible"] and maps["visible"] and len(maps["value"]) == 4
    assert "Explaining **dog**" in scores


def test_no_files_written_next_to_the_app(server):
    import app

    assert not Path(app.__file__).with_suffix(".pyi").exists()  # Gradio writes one per Component subclass


def test_broken_checkpoints_are_listed_and_the_rest_work(server):
    url, client, _ = server
    config = httpx.get(f"{url}config", timeout=10).json()
    notes = [c["props"].get("value") or "" for c in config["components"] if c["props"].get("elem_id") == "load-errors"]
    assert len(notes) == 1
    assert "broken_json" in notes[0] and "not valid JSON" in notes[0]
    assert "no_weights" in notes[0] and "model.safetensors" in notes[0]
    assert "not_a_checkpoint" not in notes[0]
    dropdown = next(c for c in config["components"] if c["props"].get("elem_id") == "explain-model")
    assert [choice[1] for choice in dropdown["props"]["choices"]] == list(MODELS)
    assert dropdown["props"]["value"] == "vit_nano_convstem"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"\x00\x01garbage" * 50, "not a recognised image"),
        (b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>', "SVG"),
    ],
)
def test_bad_image_gives_an_error_and_the_server_keeps_serving(server, content, message):
    _, client, tmp = server
    bad = tmp / "bad.jpg"
    bad.write_bytes(content)
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(bad)), "ultimus", api_name="/predict")
    with pytest.raises(AppError, match=message):
        client.predict(handle_file(str(bad)), "ultimus", "gradcam", "predicted", api_name="/explain")
    assert client.predict(handle_file(png(tmp / "ok.png")), "ultimus", api_name="/predict")["label"]


def test_bad_arguments_give_short_errors(server):
    _, client, tmp = server
    with pytest.raises(AppError, match="does not apply"):
        client.predict(handle_file(png(tmp / "a.png")), "ultimus", "attention_rollout", "predicted", api_name="/explain")
    tiny = tmp / "tiny.png"
    Image.new("RGB", (1, 1)).save(tiny)
    with pytest.raises(AppError, match="at least 4 pixels"):
        client.predict(handle_file(str(tiny)), "ultimus", api_name="/predict")


def test_misclassified_gallery(server):
    _, client, _ = server
    items, note = client.predict("vit_nano_convstem", api_name="/misclassified")
    assert 0 < len(items) <= 24
    assert "30 test images" in note
    for item in items:
        assert re.fullmatch(r"(\w+) → (\w+) \((0|1)\.\d\d\)", item["caption"])
        true, predicted = item["caption"].split(" (")[0].split(" → ")
        assert true != predicted
        with Image.open(item["image"]) as image:
            assert image.size == (96, 96)


def test_missing_data_explains_how_to_provide_it(tmp_path, monkeypatch):
    import app

    monkeypatch.setenv("VITLAB_CACHE", str(tmp_path / "cache"))
    checkpoints = tmp_path / "checkpoints"
    torch.manual_seed(0)
    model = create_model("ultimus")
    save_checkpoint(model, checkpoints / "ultimus",
                    model_config(model, mean=CIFAR10_MEAN, std=CIFAR10_STD, classes=CIFAR10_CLASSES, image_size=32))
    demo = app.build_demo(checkpoints_dir=checkpoints, data_root=tmp_path / "nowhere")
    _, url, _ = demo.launch(prevent_thread_lock=True, server_port=free_port(), quiet=True)
    try:
        items, note = Client(url, verbose=False).predict("ultimus", api_name="/misclassified")
    finally:
        demo.close()
    assert items == []
    assert "VITLAB_DATA" in note and "download=True" in note


def test_sources_and_model_card(tmp_path):
    root = make_checkpoints(tmp_path / "checkpoints")
    sources = checkpoint_sources(root, " owner/repo ,")
    assert [Path(s).name for s in sources[:-1]] == ["broken_json", "no_weights", "ultimus", "vit_nano_convstem"]
    assert sources[-1] == "owner/repo"
    loaded, failed = load_models(sources[:-1])
    assert list(loaded) == list(MODELS) and set(failed) == {"broken_json", "no_weights"}
    card = model_card(loaded["vit_nano_convstem"])
    assert "95,258" in card.summary and "61.50%" in card.summary and "| cat | 40.0% |" in card.summary
    assert "Total params: 95,258" in card.architecture
    assert list(card.plots) == ["curves.png"]
    assert "accuracy unknown" in model_card(loaded["ultimus"]).summary
