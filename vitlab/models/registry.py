"""Model registry: ``create_model(name, **overrides)`` and ``list_models()``.

Written only at import time, as in timm's ``_registry.py``: each model file
calls :func:`register_model` for its presets. A preset is a model class plus the
keyword arguments that differ from the class defaults. ``create_model`` records
the registry name and the full keyword arguments on the model
(``model.model_name``, ``model.model_args``) so a checkpoint's ``config.json``
can rebuild exactly the same network.

Reference: huggingface/pytorch-image-models ``timm/models/_registry.py``.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    """One registered preset: a class and its keyword arguments."""

    name: str
    model_class: type[nn.Module]
    preset: dict[str, Any] = field(default_factory=dict)
    description: str = ""

    def default_args(self) -> dict[str, Any]:
        """The class's keyword defaults with the preset applied."""
        signature = inspect.signature(self.model_class.__init__)
        defaults = {
            name: p.default
            for name, p in signature.parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
        }
        return {**defaults, **self.preset}

    def accepted_args(self) -> set[str]:
        signature = inspect.signature(self.model_class.__init__)
        return {n for n, p in signature.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(name: str, model_class: type[nn.Module], description: str = "", **preset: Any) -> None:
    """Register ``model_class`` with ``preset`` keyword arguments under ``name``."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = ModelEntry(name, model_class, dict(preset), description)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}") from None


def create_model(name: str, **overrides: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword ``overrides``.

    Raises ``KeyError`` naming the known models for an unknown name, and
    ``TypeError`` naming the accepted arguments for an unknown override.
    """
    entry = get_entry(name)
    unknown = set(overrides) - entry.accepted_args()
    if unknown:
        raise TypeError(
            f"{name}: unknown argument(s) {sorted(unknown)}; accepted: {sorted(entry.accepted_args())}"
        )
    args = {**entry.default_args(), **overrides}
    model = entry.model_class(**args)
    model.model_name = name
    model.model_args = args
    return model
