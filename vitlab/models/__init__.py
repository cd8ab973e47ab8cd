"""vitlab's model zoo: a registry of CIFAR-10 vision transformers and Ultimus.

``create_model(name, **overrides)`` builds a registered model; ``list_models()``
names them. Every model maps (B, 3, H, W) normalised images to (B, classes)
logits and declares what explainers need: ``cam_target_layers()``,
``token_grid`` ((h, w) of patch tokens, or ``None``), and a softmax module named
``attend`` in each attention block whose output is (B, heads, N, N).
"""
from . import ultimus, vit, vit_b16, vit_conv, vit_convstem  # noqa: F401  (registers the models)
from .registry import create_model, get_entry, list_models, register_model
from .vit import Attention

__all__ = ["create_model", "get_entry", "list_models", "register_model", "set_fused_attention"]


def set_fused_attention(model, enabled: bool) -> None:
    """Switch every :class:`Attention` of ``model`` to (or from) the fused kernel.

    Fused attention is faster but never produces the attention weights, so the
    explain path always turns it off.
    """
    for module in model.modules():
        if isinstance(module, Attention):
            module.fused = enabled
