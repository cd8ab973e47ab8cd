"""Checkpoints: save and load (``config.json`` + ``model.safetensors``), push to the Hub.

A checkpoint is a folder, the layout of a Hugging Face model repo:

    config.json          registry name, constructor arguments, mean/std, classes, image size
    model.safetensors    the weights (safetensors only: loading never unpickles anything)
    README.md, metrics.json, history.csv, *.png   written by training/run.py

``load_checkpoint(source)`` takes such a folder or a Hub repo id (downloaded
through huggingface_hub's cache, so it also works offline once cached) and
returns ``(model, config)`` with the model in eval mode. Every failure is a
:class:`CheckpointError` whose message is one line naming the file and problem.

References: huggingface_hub ``snapshot_download`` / ``HfApi.upload_folder``;
safetensors (https://huggingface.co/docs/safetensors).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .models import create_model, get_entry

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
REQUIRED_CONFIG_KEYS = ("model", "model_args", "mean", "std", "classes", "image_size")
# Files a Hub checkpoint may hold that loading or the app reads; nothing else is downloaded.
HUB_FILES = ["config.json", "model.safetensors", "README.md", "metrics.json", "history.csv", "*.png"]
HUB_TIMEOUT_S = 10.0
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600 files; checkpoints are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def model_config(model: nn.Module, *, mean, std, classes, image_size: int) -> dict[str, Any]:
    """The ``config.json`` dict that rebuilds ``model`` (made by ``create_model``)."""
    if not hasattr(model, "model_name"):
        raise ValueError("model was not built by vitlab.models.create_model: no registry name to record")
    return {
        "model": model.model_name,
        "model_args": dict(model.model_args),
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "classes": list(classes),
        "image_size": int(image_size),
        "library": "vitlab",
    }


def save_checkpoint(model: nn.Module, folder: str | os.PathLike, config: dict[str, Any]) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``folder``, each atomically."""
    from safetensors.torch import save

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in unwrap(model).state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, save(state, metadata={"format": "pt"}))
    atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2) + "\n")


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def read_config(folder: Path) -> dict[str, Any]:
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing (a checkpoint folder needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise CheckpointError(f"{path}: missing key(s) {missing}")
    try:
        get_entry(config["model"])
    except KeyError as e:
        raise CheckpointError(f"{path}: {e.args[0]}") from None
    return config


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path}: missing")
    try:
        return load_file(path)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def load_from_folder(folder: Path) -> tuple[nn.Module, dict[str, Any]]:
    config = read_config(folder)
    try:
        model = create_model(config["model"], **config["model_args"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: cannot build {config['model']!r}: {e}") from None
    state = read_weights(folder / WEIGHTS_FILE)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        raise CheckpointError(
            f"{folder / WEIGHTS_FILE}: keys do not match {config['model']!r}: "
            f"missing {missing[:3]}{'...' if len(missing) > 3 else ''}, extra {extra[:3]}{'...' if len(extra) > 3 else ''}"
        )
    wrong = [k for k in expected if expected[k].shape != state[k].shape]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{folder / WEIGHTS_FILE}: shape mismatch for {len(wrong)} tensor(s), e.g. {k}: "
            f"file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        )
    model.load_state_dict(state, strict=True)
    return model.eval(), config


def is_repo_id(source: str) -> bool:
    return bool(_REPO_ID.match(source)) and not os.path.exists(source)


def download_from_hub(repo_id: str, revision: str | None = None) -> Path:
    """Fetch (or reuse from the cache) a checkpoint repo; clear errors offline or when missing."""
    import huggingface_hub
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(HUB_TIMEOUT_S)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(HUB_TIMEOUT_S)))
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise CheckpointError(f"{repo_id}: no such Hub repo, or it is private/gated ({type(e).__name__})") from None
    except RevisionNotFoundError:
        raise CheckpointError(f"{repo_id}: revision {revision!r} not found on the Hub") from None
    except LocalEntryNotFoundError:
        offline = huggingface_hub.constants.HF_HUB_OFFLINE
        why = "HF_HUB_OFFLINE is set" if offline else "the Hub could not be reached"
        raise CheckpointError(
            f"{repo_id}: not in the local Hugging Face cache and {why}; "
            "connect and retry, or pass a local checkpoint folder"
        ) from None
    except OSError as e:  # network errors surface as OSError subclasses (httpx / requests)
        raise CheckpointError(f"{repo_id}: Hub download failed ({type(e).__name__}: {e})") from None


def load_checkpoint(source: str | os.PathLike, revision: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a checkpoint folder or a Hub repo id: ``(model in eval mode, config dict)``."""
    source = os.fspath(source)
    if os.path.isdir(source):
        return load_from_folder(Path(source))
    if is_repo_id(source):
        return load_from_folder(download_from_hub(source, revision))
    raise CheckpointError(f"{source}: not a checkpoint folder, and not a Hub repo id of the form owner/name")


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, token: str | None = None, private: bool = False) -> str:
    """Create ``repo_id`` if needed and upload the checkpoint ``folder``; returns the commit URL.

    ``token``: defaults to ``HF_TOKEN`` or the ``huggingface-cli login`` cache
    (huggingface_hub's own lookup); it is never printed or written anywhere.
    """
    from huggingface_hub import HfApi

    folder = Path(folder)
    read_config(folder)  # refuse to publish something that would not load
    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        allow_patterns=HUB_FILES + ["*.md", "*.txt", "*.json", "*.csv"],
        ignore_patterns=[".*", "*.tmp"],
        commit_message="Upload vitlab checkpoint",
    )
    return str(getattr(info, "commit_url", info))
