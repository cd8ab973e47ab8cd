"""The training engine: tensor data on the device, batched augmentation, One-Cycle per batch.

In the spirit of KellerJordan/cifar10-airbench and karpathy/nanoGPT: the
uint8 dataset lives on the training device, each epoch draws a permutation from
a generator seeded by ``(seed, epoch)``, augments whole batches with tensor ops
and normalises on the fly; there is no DataLoader and no per-image Python.

Resumability: the whole training state (model, optimizer, epoch, history) is one
safetensors file written atomically after every epoch. Since the data order,
augmentation and dropout of epoch ``e`` depend only on ``(seed, e)`` and the LR
only on the global step, a resumed run repeats the uninterrupted one exactly on
CPU for a fixed number of threads.

Distributed: under ``torchrun`` each rank trains on its shard of the training
tensors with DistributedDataParallel; evaluation is sharded and summed with
``all_reduce``; only rank 0 writes files.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vitlab.data import BatchAugment, CifarSplit, normalize
from vitlab.hub import atomic_write_bytes

TRAINING_STATE_FILE = "training_state.safetensors"


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_request: str) -> DistInfo:
    """Join the process group torchrun set up (RANK/WORLD_SIZE), else a single process."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)))
    backend = "nccl" if device_request.startswith("cuda") or (device_request == "auto" and torch.cuda.is_available()) else "gloo"
    dist.init_process_group(backend=backend)
    return info


def pick_device(request: str, dist_info: DistInfo) -> torch.device:
    """``auto``: cuda, then mps, then cpu. Under torchrun each rank takes cuda:LOCAL_RANK."""
    if request == "auto":
        if torch.cuda.is_available():
            request = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            request = "mps"
        else:
            request = "cpu"
    if request == "cuda" and dist_info.enabled:
        request = f"cuda:{dist_info.local_rank}"
    device = torch.device(request)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


@dataclass
class EpochStats:
    loss: float
    accuracy: float  # percent
    seconds: float = 0.0


@dataclass
class TrainSetup:
    """Everything one epoch needs; built once by run.py."""

    model: nn.Module  # possibly DDP-wrapped
    optimizer: torch.optim.Optimizer
    schedule: Any  # OneCycle
    augment: BatchAugment
    mean: tuple[float, ...]
    std: tuple[float, ...]
    batch_size: int
    seed: int
    label_smoothing: float = 0.0
    l1_weight: float = 0.0
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    dist: DistInfo = field(default_factory=DistInfo)


def prepare_inputs(setup: TrainSetup, images_uint8: torch.Tensor) -> torch.Tensor:
    x = normalize(images_uint8, setup.mean, setup.std)
    return x.contiguous(memory_format=torch.channels_last) if setup.channels_last else x


def loss_fn(setup: TrainSetup, model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits): cross-entropy with label smoothing, plus the optional L1 penalty."""
    with torch.autocast(inputs.device.type, dtype=setup.amp_dtype, enabled=setup.amp_dtype is not None):
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets, label_smoothing=setup.label_smoothing)
    if setup.l1_weight:
        # L1 on weights only (seed 002's regulariser), not on biases / norms / embeddings.
        l1 = sum(p.abs().sum() for p in model.parameters() if p.ndim > 1)
        loss = loss + setup.l1_weight * l1
    return loss, logits


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The generator that fixes epoch ``epoch``'s order and augmentation."""
    g = torch.Generator(device="cpu")
    g.manual_seed(seed * 100_003 + epoch)
    return g


def train_one_epoch(setup: TrainSetup, data: CifarSplit, epoch: int, step: int, progress=None) -> tuple[EpochStats, int, list[float]]:
    """One pass over ``data`` (this rank's shard). Returns stats, the next global step, LRs used."""
    model = setup.model
    model.train()
    torch.manual_seed(setup.seed * 100_003 + epoch + 7)  # dropout RNG, fixed per epoch for exact resume
    gen = epoch_generator(setup.seed, epoch, data.images.device)
    order = torch.randperm(len(data.labels), generator=gen).to(data.images.device)
    n_batches = len(order) // setup.batch_size  # drop_last: equal batch counts on every rank
    total_loss = torch.zeros((), device=data.images.device)
    correct = torch.zeros((), device=data.images.device, dtype=torch.long)
    seen = 0
    lrs = []
    start = time.perf_counter()
    batches = range(n_batches) if progress is None else progress(range(n_batches))
    for i in batches:
        idx = order[i * setup.batch_size : (i + 1) * setup.batch_size]
        images = setup.augment(data.images[idx], generator=gen)
        targets = data.labels[idx]
        lrs.append(setup.schedule.apply(setup.optimizer, step))
        setup.optimizer.zero_grad(set_to_none=True)
        loss, logits = loss_fn(setup, model, prepare_inputs(setup, images), targets)
        loss.backward()
        setup.optimizer.step()
        step += 1
        total_loss += loss.detach() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
        if progress is not None and i % 20 == 0:
            batches.set_postfix(loss=f"{total_loss.item() / seen:.3f}", lr=f"{lrs[-1]:.2e}")
    stats = torch.stack([total_loss, correct.to(total_loss.dtype), torch.tensor(float(seen), device=total_loss.device)])
    if setup.dist.enabled:
        dist.all_reduce(stats)
    loss_sum, correct_sum, count = stats.tolist()
    return EpochStats(loss_sum / max(count, 1), 100.0 * correct_sum / max(count, 1), time.perf_counter() - start), step, lrs


@torch.inference_mode()
def evaluate(model: nn.Module, data: CifarSplit, mean, std, *, batch_size: int = 1000, num_classes: int = 10,
             dist_info: DistInfo | None = None, channels_last: bool = False) -> tuple[EpochStats, torch.Tensor]:
    """Loss, accuracy and the (true, predicted) confusion matrix on ``data``.

    Under torchrun each rank evaluates its shard and the sums are all-reduced.
    """
    model.eval()
    device = data.images.device
    confusion = torch.zeros(num_classes, num_classes, dtype=torch.float64, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    start = time.perf_counter()
    for i in range(0, len(data.labels), batch_size):
        x = normalize(data.images[i : i + batch_size], mean, std)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = data.labels[i : i + batch_size]
        logits = model(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
        confusion += torch.bincount(y * num_classes + logits.argmax(1), minlength=num_classes**2).reshape(num_classes, num_classes)
    if dist_info is not None and dist_info.enabled:
        dist.all_reduce(confusion)
        dist.all_reduce(loss_sum)
    n = confusion.sum().item()
    stats = EpochStats(loss_sum.item() / max(n, 1), 100.0 * confusion.diag().sum().item() / max(n, 1), time.perf_counter() - start)
    return stats, confusion.long().cpu()


# ---- resumable training state: one safetensors file, written atomically ----

def save_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, meta: dict[str, Any]) -> None:
    """Model + optimizer tensors and JSON ``meta`` (epoch, step, history) in one atomic file."""
    from safetensors.torch import save

    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    for pid, pstate in opt["state"].items():
        for name, value in pstate.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optim.{pid}.{name}"] = t.detach().contiguous().cpu()
    metadata = {"meta": json.dumps(meta), "param_groups": json.dumps(opt["param_groups"])}
    atomic_write_bytes(path, save(tensors, metadata=metadata))


def load_training_state(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model and optimizer from :func:`save_training_state`; returns ``meta``."""
    from safetensors import safe_open

    device = next(model.parameters()).device
    model_state, optim_state = {}, {}
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        for key in f.keys():
            kind, rest = key.split(".", 1)
            if kind == "model":
                model_state[rest] = f.get_tensor(key)
            else:
                pid, name = rest.split(".", 1)
                optim_state.setdefault(int(pid), {})[name] = f.get_tensor(key).to(device)
    model.load_state_dict(model_state, strict=True)
    for pstate in optim_state.values():
        if "step" in pstate:  # Adam keeps `step` as a CPU float tensor
            pstate["step"] = pstate["step"].cpu()
    optimizer.load_state_dict({"state": optim_state, "param_groups": json.loads(metadata["param_groups"])})
    return json.loads(metadata["meta"])
