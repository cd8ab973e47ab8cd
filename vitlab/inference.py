"""One image in, a prediction and its explanations out: what the app and its API serve.

- :func:`predict`: class probabilities, most likely first.
- :func:`explain_image`: one explainer's heatmap, its overlay on what the model
  saw, and its deletion / insertion scores next to a random map's.
- :func:`explain_request`: everything the Explain tab shows for one upload
  (prediction, the model's view, a CAM, both rollouts or the Ultimus maps),
  computed under one hold of the model's lock.
- Serving: :func:`checkpoint_sources` / :func:`load_models` load an app's
  models once (a broken one is reported, not fatal); :func:`model_card` is what
  its Model tab shows (``vitlab.cost`` table, ``metrics.json``, the run's plots).

Models are shared by every request of a server. pytorch-grad-cam attaches hooks
to a model and stores whatever activations pass through it; AblationCAM swaps a
layer; the explainers write ``.grad``. So every forward pass of a shared model,
plain predictions included, holds that model's lock (:func:`model_lock`): a
request never sees another request's activations, and a prediction never runs
through a half-swapped model. Images are decoded and checked by
:func:`vitlab.images.load_image` before the lock is taken.

References: jacobgil/pytorch-grad-cam ``base_cam.py`` (hooks live on the model);
Petsiuk et al. 2018, RISE (deletion / insertion); :mod:`vitlab.explain`.
"""
from __future__ import annotations

import json
import math
import os
import threading
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from .cost import format_table, model_cost
from .explain import EXPLAINERS, attention_matrix_image, explainers_for, faithfulness_report, overlay, ultimus_attention_maps
from .hub import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, download_from_hub, is_repo_id, load_checkpoint
from .images import ImageError, ImageSource, load_image, model_view, normalize_view
from .models import get_entry, set_fused_attention
from .models.ultimus import Ultimus

ROLLOUTS = ("attention_rollout", "gradient_rollout")
DISPLAY_MIN_SIDE = 224  # pixels: small model inputs are enlarged (nearest) to at least this for display
PREDICTED = "predicted"  # the target that means "the class the model predicts"

_locks: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The one lock of ``model``: hold it around every forward pass of a shared model.

    Re-entrant, so a function holding it may call another that takes it too.
    """
    with _locks_guard:
        lock = _locks.get(model)
        if lock is None:
            lock = _locks[model] = threading.RLock()
        return lock


@dataclass(frozen=True)
class ExplainResult:
    """One explanation of one image.

    ``overlay``: uint8 (D, D, 3), the heatmap blended over the model's view enlarged
    for display; ``heatmap``: float32 (S, S) in [0, 1] at the model's resolution;
    ``target``: the class explained; ``scores``: ``deletion_auc``, ``insertion_auc``
    and the same for a random map (``random_deletion_auc``, ``random_insertion_auc``).
    """

    method: str
    overlay: np.ndarray
    heatmap: np.ndarray
    target: str
    scores: dict[str, float]


@dataclass(frozen=True)
class ExplainReport:
    """Everything the Explain tab shows for one image."""

    probabilities: dict[str, float]
    view: np.ndarray  # uint8 (D, D, 3): the model's input, enlarged for display
    target: str
    results: dict[str, ExplainResult]  # method -> result, CAM first
    attention_maps: list[np.ndarray] = field(default_factory=list)  # Ultimus: one uint8 image per block


def enlarge(view: np.ndarray, min_side: int = DISPLAY_MIN_SIDE) -> np.ndarray:
    """Nearest-neighbour upscaling by an integer factor so each model pixel stays a crisp square."""
    factor = max(1, math.ceil(min_side / min(view.shape[:2])))
    return np.repeat(np.repeat(view, factor, axis=0), factor, axis=1)


def prepare(config: dict[str, Any], image: ImageSource) -> tuple[np.ndarray, torch.Tensor]:
    """Decode and check ``image``: (the model's view uint8 (S, S, 3), the normalised (1, 3, S, S) input)."""
    view = model_view(load_image(image), int(config["image_size"]))
    return view, normalize_view(view, config["mean"], config["std"])


def probabilities_of(model: nn.Module, config: dict[str, Any], x: torch.Tensor) -> dict[str, float]:
    with model_lock(model), torch.inference_mode():
        probs = model(x).float().softmax(dim=-1)[0]
    ranked = sorted(zip(config["classes"], probs.tolist(), strict=True), key=lambda item: item[1], reverse=True)
    return {name: float(p) for name, p in ranked}


def predict(model: nn.Module, config: dict[str, Any], image: ImageSource) -> dict[str, float]:
    """Class name -> probability for ``image``, most likely first (sums to 1)."""
    _, x = prepare(config, image)
    return probabilities_of(model, config, x)


def class_index(config: dict[str, Any], target: int | str | None, probabilities: dict[str, float]) -> int:
    """``target`` (None / "predicted", a class name or an index) as a class index."""
    classes = list(config["classes"])
    if target is None or target == PREDICTED:
        return classes.index(next(iter(probabilities)))
    if isinstance(target, str):
        if target not in classes:
            raise ValueError(f"unknown class {target!r}; classes: {', '.join(classes)}")
        return classes.index(target)
    if not 0 <= int(target) < len(classes):
        raise ValueError(f"class index {target} out of range [0, {len(classes)})")
    return int(target)


def check_method(model: nn.Module, method: str) -> None:
    available = explainers_for(model)
    if method not in available:
        raise ValueError(f"method {method!r} does not apply to this model; available: {', '.join(available)}")


def run_explainer(
    model: nn.Module, x: torch.Tensor, view: np.ndarray, method: str, target: int, target_name: str, opacity: float
) -> ExplainResult:
    """One explainer and its faithfulness scores; the caller holds the model's lock."""
    heatmap = EXPLAINERS[method](model, x, [target])[0]
    report = faithfulness_report(model, x, heatmap[None], [target])
    keys = ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc")
    scores = {key: float(report[key][0]) for key in keys}
    return ExplainResult(method, overlay(enlarge(view), heatmap, opacity), heatmap, target_name, scores)


def explain_image(
    model: nn.Module,
    config: dict[str, Any],
    image: ImageSource,
    method: str,
    target: int | str | None = None,
    opacity: float = 0.5,
) -> ExplainResult:
    """Explain ``image`` with ``method`` (a name in ``explainers_for(model)``) for ``target``.

    ``target``: None or "predicted" for the predicted class, else a class name or index.
    """
    check_method(model, method)
    view, x = prepare(config, image)
    with model_lock(model):
        set_fused_attention(model, False)  # fused kernels never run ``attend``: no attention to read
        probabilities = probabilities_of(model, config, x)
        index = class_index(config, target, probabilities)
        return run_explainer(model, x, view, method, index, config["classes"][index], opacity)


def explain_request(
    model: nn.Module,
    config: dict[str, Any],
    image: ImageSource,
    cam_method: str = "gradcam",
    target: int | str | None = None,
    opacity: float = 0.5,
) -> ExplainReport:
    """Prediction, model view, ``cam_method`` and (token models) both rollouts or (Ultimus) its maps."""
    check_method(model, cam_method)
    view, x = prepare(config, image)
    methods = [cam_method] + [name for name in ROLLOUTS if name in explainers_for(model) and name != cam_method]
    with model_lock(model):
        set_fused_attention(model, False)
        probabilities = probabilities_of(model, config, x)
        index = class_index(config, target, probabilities)
        name = config["classes"][index]
        results = {method: run_explainer(model, x, view, method, index, name, opacity) for method in methods}
        maps = []
        if isinstance(model, Ultimus):  # attention over 8 features, not space: show its maps instead
            maps = [attention_matrix_image(block) for block in ultimus_attention_maps(model, x)[0]]
    return ExplainReport(probabilities, enlarge(view), name, results, maps)


# ---------------------------------------------------------------------------
# Serving: the models an app loads once, and what it shows about each
# ---------------------------------------------------------------------------

PLOTS = ("curves.png", "confusion_matrix.png", "lr_history.png", "lr_finder.png")


@dataclass(frozen=True)
class ServedModel:
    """A loaded checkpoint: ``name`` (folder name or Hub repo id), model, config, its folder."""

    name: str
    model: nn.Module
    config: dict[str, Any]
    folder: Path


def checkpoint_sources(checkpoints_dir: str | os.PathLike | None, hub_ids: str | None = None) -> list[str]:
    """Every sub-folder of ``checkpoints_dir`` holding a checkpoint file, then the comma-separated ``hub_ids``."""
    folders: list[str] = []
    root = Path(checkpoints_dir) if checkpoints_dir is not None else None
    if root is not None and root.is_dir():
        folders = [
            str(path) for path in sorted(root.iterdir())
            if path.is_dir() and ((path / CONFIG_FILE).is_file() or (path / WEIGHTS_FILE).is_file())
        ]
    return folders + [repo.strip() for repo in (hub_ids or "").split(",") if repo.strip()]


def load_models(sources: list[str]) -> tuple[dict[str, ServedModel], dict[str, str]]:
    """Load each source (folder or Hub repo id): ``({name: model}, {name: error message})``.

    One that fails does not stop the others; its one-line error is kept to show.
    """
    loaded: dict[str, ServedModel] = {}
    failed: dict[str, str] = {}
    for source in sources:
        name = Path(source).name if os.path.isdir(source) else source
        try:
            folder = Path(source) if os.path.isdir(source) or not is_repo_id(source) else download_from_hub(source)
            model, config = load_checkpoint(folder)
        except CheckpointError as error:
            failed[name] = str(error)
            continue
        set_fused_attention(model, False)
        loaded[name] = ServedModel(name, model, config, folder)
    return loaded, failed


@dataclass(frozen=True)
class ModelCard:
    """What the app's Model tab shows: a Markdown summary, a per-layer table, the run's plots."""

    summary: str
    architecture: str
    plots: dict[str, Image.Image]


def read_metrics(folder: Path) -> dict[str, Any] | None:
    try:
        metrics = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def model_card(served: ServedModel) -> ModelCard:
    """Architecture (``vitlab.cost`` per-layer table), parameters, accuracies and plots of ``served``."""
    model, config = served.model, served.config
    with model_lock(model):  # model_cost hooks every module for one forward pass
        cost = model_cost(model, int(config["image_size"]))
    lines = [
        f"### {served.name}",
        f"Registry model `{config['model']}`: {get_entry(config['model']).description}",
        "",
        f"- Parameters: **{cost.params:,}**; per image: {cost.macs / 1e6:,.1f} M MACs at {config['image_size']} px",
    ]
    metrics = read_metrics(served.folder)
    if metrics and "test_accuracy" in metrics:
        best = metrics.get("best_test_accuracy")
        best_text = f" (best epoch: {best:.2f}%)" if best is not None else ""
        lines.append(f"- Test accuracy: **{metrics['test_accuracy']:.2f}%**{best_text}")
        per_class = metrics.get("per_class_accuracy") or {}
        if per_class:
            lines += ["", "| class | accuracy |", "|---|---:|"]
            lines += [f"| {name} | {value:.1f}% |" for name, value in per_class.items()]
    else:
        lines.append("- No `metrics.json` in the checkpoint: accuracy unknown (a run still going, or not from training/run.py)")
    if (served.folder / "history.csv").is_file():
        epochs = max(0, len((served.folder / "history.csv").read_text(encoding="utf-8").strip().splitlines()) - 1)
        lines.append(f"- `history.csv`: {epochs} epoch(s) recorded")
    plots = {}
    for file in PLOTS:
        if (served.folder / file).is_file():
            try:
                plots[file] = load_image(served.folder / file)
            except ImageError:
                continue
    return ModelCard("\n".join(lines), format_table(cost), plots)
