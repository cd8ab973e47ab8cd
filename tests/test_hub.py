"""Checkpoints: safetensors round-trip, strict and clear failures, the Hub boundary (no network here)."""
from __future__ import annotations

import json
import shutil
import time

import pytest
import torch

from vitlab.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from vitlab.hub import CheckpointError, is_repo_id, load_checkpoint, model_config, push_to_hub, save_checkpoint
from vitlab.models import create_model

TINY_VIT = dict(dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64)


def write_checkpoint(folder, name="vit", **overrides):
    torch.manual_seed(0)
    model = create_model(name, **(overrides or TINY_VIT)).eval()
    config = model_config(model, mean=CIFAR10_MEAN, std=CIFAR10_STD, classes=CIFAR10_CLASSES, image_size=32)
    save_checkpoint(model, folder, config)
    return model


def test_round_trip_gives_the_same_logits(tmp_path):
    model = write_checkpoint(tmp_path / "ckpt")
    loaded, config = load_checkpoint(tmp_path / "ckpt")
    assert not loaded.training
    assert config["model"] == "vit" and config["classes"] == list(CIFAR10_CLASSES)
    assert config["mean"] == list(CIFAR10_MEAN) and config["image_size"] == 32
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert not list((tmp_path / "ckpt").glob("*.tmp")) and not list((tmp_path / "ckpt").glob(".*"))


def one_line_error(source) -> str:
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(source)
    message = str(err.value)
    assert "\n" not in message
    return message


def test_missing_weights_file(tmp_path):
    write_checkpoint(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    assert "model.safetensors: missing" in one_line_error(tmp_path)


def test_missing_config(tmp_path):
    write_checkpoint(tmp_path)
    (tmp_path / "config.json").unlink()
    assert "config.json: missing" in one_line_error(tmp_path)


def test_truncated_safetensors(tmp_path):
    write_checkpoint(tmp_path)
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert "model.safetensors: not a readable safetensors file" in one_line_error(tmp_path)


def test_pickle_renamed_to_safetensors_is_refused(tmp_path):
    write_checkpoint(tmp_path)
    torch.save({"x": torch.zeros(1)}, tmp_path / "model.safetensors")
    assert "not a readable safetensors file" in one_line_error(tmp_path)


def test_unknown_model_name(tmp_path):
    write_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model"] = "resnet9000"
    (tmp_path / "config.json").write_text(json.dumps(config))
    message = one_line_error(tmp_path)
    assert "config.json" in message and "resnet9000" in message and "vit_conv" in message


def test_bad_json_and_missing_keys(tmp_path):
    write_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    assert "not valid JSON" in one_line_error(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model": "vit"}))
    assert "missing key" in one_line_error(tmp_path)


def test_shape_mismatch(tmp_path):
    write_checkpoint(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["model_args"]["mlp_dim"] = 48
    (tmp_path / "config.json").write_text(json.dumps(config))
    message = one_line_error(tmp_path)
    assert "shape mismatch" in message and "model.safetensors" in message


def test_extra_and_missing_keys(tmp_path):
    from safetensors.torch import load_file, save_file

    write_checkpoint(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state["surprise.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    assert "extra ['surprise.weight']" in one_line_error(tmp_path)
    del state["surprise.weight"], state["cls_token"]
    save_file(state, tmp_path / "model.safetensors")
    assert "missing ['cls_token']" in one_line_error(tmp_path)


def test_not_a_folder_nor_a_repo_id(tmp_path):
    assert "not a checkpoint folder" in one_line_error(tmp_path / "nope")
    assert is_repo_id("someone/vitlab-ultimus") and not is_repo_id("just-a-name")


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    cache = tmp_path / "hf-cache"
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_uncached_repo_while_offline_fails_fast_and_clearly(offline_hub):
    start = time.perf_counter()
    message = one_line_error("nobody/not-cached")
    assert "not in the local Hugging Face cache" in message and "HF_HUB_OFFLINE" in message
    assert time.perf_counter() - start < 5


def test_cached_repo_loads_offline(tmp_path, offline_hub):
    """A repo in huggingface_hub's cache layout (refs/main -> snapshots/<sha>) loads without network."""
    model = write_checkpoint(tmp_path / "src")
    sha = "0123456789abcdef0123456789abcdef01234567"
    repo = offline_hub / "models--someone--vitlab-tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)
    shutil.copytree(tmp_path / "src", repo / "snapshots" / sha)
    loaded, config = load_checkpoint("someone/vitlab-tiny")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


def test_unreachable_hub_fails_with_a_message_not_a_hang(monkeypatch, tmp_path):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # discard port: connection refused
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}")
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as err:
        load_checkpoint("someone/vitlab-missing")
    assert "someone/vitlab-missing" in str(err.value)
    assert time.perf_counter() - start < 60


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(tmp_path, monkeypatch):
    """Everything up to the network boundary: the calls huggingface_hub receives."""
    import huggingface_hub

    write_checkpoint(tmp_path)
    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **kw):
            calls.append(("create_repo", repo_id, kw))

        def upload_folder(self, **kw):
            calls.append(("upload_folder", kw))
            return type("Info", (), {"commit_url": f"https://huggingface.co/{kw['repo_id']}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    url = push_to_hub(tmp_path, "someone/vitlab-tiny")
    assert url.endswith("/commit/abc")
    assert calls[0] == ("init", None)  # token: huggingface_hub's own lookup (HF_TOKEN or login cache)
    assert calls[1][0] == "create_repo" and calls[1][2]["exist_ok"] is True
    upload = calls[2][1]
    assert upload["folder_path"] == str(tmp_path) and upload["repo_id"] == "someone/vitlab-tiny"
    assert "model.safetensors" in upload["allow_patterns"]


def test_push_refuses_a_folder_that_would_not_load(tmp_path):
    with pytest.raises(CheckpointError):
        push_to_hub(tmp_path, "someone/empty")
