"""vitlab: train vision transformers on CIFAR-10 and see why they decide what they decide.

Public entry points: :func:`vitlab.models.create_model`, :func:`load_checkpoint`,
:mod:`vitlab.data`, :mod:`vitlab.explain`, :mod:`vitlab.cost`.
"""
from .hub import CheckpointError, load_checkpoint, save_checkpoint
from .models import create_model, list_models

__all__ = ["CheckpointError", "create_model", "list_models", "load_checkpoint", "save_checkpoint"]
__version__ = "0.1.0"
