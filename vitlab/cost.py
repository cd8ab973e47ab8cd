"""Model cost: parameters, per-image MACs/FLOPs, and a per-layer table.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``, which sees
every matrix multiply the forward pass runs, including the attention matmuls
``q @ k^T`` and ``attn @ v`` that torchinfo / torchsummary (module-hook based)
miss. Like fvcore and the papers, a multiply-add is one MAC = 2 FLOPs, and
element-wise work (softmax, norms, GELU, adds) is not counted.

    python -m vitlab.cost vit_conv               # any registry name
    python -m vitlab.cost vit --set depth=2      # with constructor overrides
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .models import create_model, list_models


@dataclass
class LayerCost:
    name: str
    kind: str
    output_shape: tuple[int, ...] | None
    params: int
    macs: int  # this module's own MACs (children excluded), per image


@dataclass
class ModelCost:
    params: int
    trainable_params: int
    flops: int  # per image
    layers: list[LayerCost]

    @property
    def macs(self) -> int:
        return self.flops // 2


def input_size(model: nn.Module) -> int:
    return int(getattr(model, "model_args", {}).get("image_size", 32))


def count_params(model: nn.Module) -> tuple[int, int]:
    params = list(model.parameters())
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


@torch.no_grad()
def model_cost(model: nn.Module, image_size: int | None = None) -> ModelCost:
    """Parameters and per-image FLOPs of ``model`` on one (1, 3, S, S) input, with a per-layer table."""
    size = image_size or input_size(model)
    was_training = model.training
    model.eval()
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []
    for name, module in model.named_modules():
        def record(mod, args, out, name=name):
            if torch.is_tensor(out):
                shapes[name] = tuple(out.shape)
        handles.append(module.register_forward_hook(record))
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    root = type(model).__name__
    flops = {k.removeprefix(root).removeprefix("."): sum(v.values()) for k, v in counter.get_flop_counts().items() if k != "Global"}
    own = dict(flops)
    for key, value in flops.items():  # subtract each module from its nearest counted ancestor
        parent = key
        while parent:
            parent = parent.rpartition(".")[0]
            if parent in flops:
                own[parent] -= value
                break
    layers = []
    for name, module in model.named_modules():
        own_flops = own.get(name, 0)
        own_params = sum(p.numel() for p in module.parameters(recurse=False))
        if own_params or own_flops > 0:
            layers.append(LayerCost(name or root, type(module).__name__, shapes.get(name), own_params, own_flops // 2))
    total, trainable = count_params(model)
    return ModelCost(total, trainable, counter.get_total_flops(), layers)


def format_table(cost: ModelCost) -> str:
    rows = [f"{'layer':<44} {'type':<16} {'output shape':<20} {'params':>11} {'MACs':>14}", "-" * 109]
    for layer in cost.layers:
        shape = str(list(layer.output_shape)) if layer.output_shape else "-"
        rows.append(f"{layer.name[:44]:<44} {layer.kind[:16]:<16} {shape:<20} {layer.params:>11,} {layer.macs:>14,}")
    rows += [
        "-" * 109,
        f"Total params: {cost.params:,}",
        f"Trainable params: {cost.trainable_params:,}",
        f"MACs per image: {cost.macs:,} ({cost.macs / 1e6:.2f} M)",
        f"FLOPs per image: {cost.flops:,} ({cost.flops / 1e9:.3f} G)",
    ]
    return "\n".join(rows)


def parse_override(text: str) -> tuple[str, object]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m vitlab.cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("model", choices=list_models(), help="registry name")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="constructor override (JSON value)")
    args = parser.parse_args(argv)
    model = create_model(args.model, **dict(parse_override(s) for s in args.set))
    print(f"{args.model}: {model.model_args}")
    print(format_table(model_cost(model)))


if __name__ == "__main__":
    main()
