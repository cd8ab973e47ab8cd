"""What a run writes for its readers: history, metrics, plots and the model card.

Plots (matplotlib, Agg backend): loss and accuracy curves, LR history, the LR
range test curve, the confusion matrix. ``classification_report`` gives
precision / recall / F1 per class from the confusion matrix (the same figures
as scikit-learn's report). ``model_card`` writes a Hugging Face model card with
the metadata block the Hub reads (library, tags, datasets, metrics,
model-index) and every measured number of the run.

References: Hugging Face model cards
(https://huggingface.co/docs/hub/model-cards); the seeds' training-curve and
confusion-matrix plots.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from vitlab.hub import atomic_write_bytes, atomic_write_text  # noqa: E402

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"]


def write_history(path: Path, history: list[dict[str, float]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=HISTORY_FIELDS)
    writer.writeheader()
    for row in history:
        writer.writerow({k: row[k] for k in HISTORY_FIELDS})
    atomic_write_text(path, buf.getvalue())


def read_history(path: Path) -> list[dict[str, float]]:
    with open(path, newline="") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


def classification_report(confusion: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """Per-class precision, recall, F1 and support from a (true, predicted) confusion matrix."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    support = confusion.sum(1)
    predicted = confusion.sum(0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    per_class = {
        c: {"precision": float(p), "recall": float(r), "f1": float(f), "support": int(s)}
        for c, p, r, f, s in zip(classes, precision, recall, f1, support)
    }
    return {
        "per_class": per_class,
        "macro_avg": {"precision": float(precision.mean()), "recall": float(recall.mean()), "f1": float(f1.mean())},
        "accuracy": float(tp.sum() / max(confusion.sum(), 1)),
    }


def format_classification_report(report: dict[str, Any]) -> str:
    lines = [f"{'class':>12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}"]
    for name, r in report["per_class"].items():
        lines.append(f"{name:>12} {r['precision']:9.4f} {r['recall']:7.4f} {r['f1']:7.4f} {r['support']:8d}")
    m = report["macro_avg"]
    lines.append(f"{'macro avg':>12} {m['precision']:9.4f} {m['recall']:7.4f} {m['f1']:7.4f}")
    lines.append(f"{'accuracy':>12} {report['accuracy']:9.4f}")
    return "\n".join(lines) + "\n"


def save_figure(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], label="train")
    ax_loss.plot(epochs, [h["test_loss"] for h in history], label="test")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.plot(epochs, [h["train_acc"] for h in history], label="train (augmented)")
    ax_acc.plot(epochs, [h["test_acc"] for h in history], label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, path)


def plot_lr_history(lrs: list[float], steps_per_epoch: int, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(np.arange(len(lrs)) / max(steps_per_epoch, 1), lrs)
    ax.set(xlabel="epoch", ylabel="learning rate", title="One-Cycle learning rate (per batch)")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_lr_finder(result: dict[str, Any], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(result["lrs"], result["losses"])
    ax.set_xscale("log")
    if np.isfinite(result["suggested_lr"]):
        ax.axvline(result["suggested_lr"], color="red", ls="--", label=f"suggested {result['suggested_lr']:.2e}")
        ax.legend()
    ax.set(xlabel="learning rate (log)", ylabel="smoothed loss", title="LR range test")
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def plot_confusion_matrix(confusion: np.ndarray, classes: list[str], path: Path) -> None:
    confusion = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix (test set)")
    threshold = confusion.max() / 2
    for i in range(len(classes)):
        for j in range(len(classes)):
            ax.text(j, i, int(confusion[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if confusion[i, j] > threshold else "black")
    save_figure(fig, path)


def write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def model_card(*, config: dict[str, Any], metrics: dict[str, Any], run: dict[str, Any], cost: dict[str, Any]) -> str:
    """A Hugging Face model card (README.md) with metadata and the run's measured numbers."""
    name = config["model"]
    acc = metrics["test_accuracy"]
    per_class = "\n".join(f"| {c} | {a:.2f} |" for c, a in metrics["per_class_accuracy"].items())
    args = json.dumps(config["model_args"], sort_keys=True)
    return f"""---
library_name: pytorch
license: mit
tags:
- vitlab
- image-classification
- vision-transformer
- explainability
- cifar10
datasets:
- cifar10
metrics:
- accuracy
model-index:
- name: {name}
  results:
  - task:
      type: image-classification
      name: Image Classification
    dataset:
      type: cifar10
      name: CIFAR-10
      split: test
    metrics:
    - type: accuracy
      value: {acc:.2f}
      name: Test accuracy (%)
---

# vitlab `{name}` on CIFAR-10

**Test accuracy: {acc:.2f}%** on the {metrics['test_images']:,} CIFAR-10 test images
(final epoch; best epoch {metrics['best_epoch']}: {metrics['best_test_accuracy']:.2f}%).
Data: {run['data_source']}.

| | |
|---|---|
| model | `{name}` (vitlab registry) |
| model args | `{args}` |
| parameters | {cost['params']:,} |
| MACs / image | {cost['macs']:,} |
| epochs | {run['epochs']} |
| training time | {run['train_seconds'] / 60:.1f} min |
| hardware | {run['hardware']} |
| seed | {run['seed']} |

Reproduce (from a clone of vitlab, with CIFAR-10 at `VITLAB_DATA`):

```
{run['command']}
```

Load it:

```python
import vitlab
model, config = vitlab.load_checkpoint("path/or/hub-repo-id")
```

## Per-class test accuracy (%)

| class | accuracy |
|---|---|
{per_class}

## Files

`config.json` (registry name, constructor arguments, mean/std, classes, input size),
`model.safetensors`, `metrics.json` (accuracies, confusion matrix, classification report),
`history.csv` (per epoch), `classification_report.txt`, and plots: `curves.png`,
`lr_history.png`, `confusion_matrix.png`{', `lr_finder.png`' if run.get('lr_finder') else ''}.

Trained with vitlab's `training/run.py` (One-Cycle schedule, batched tensor augmentation:
{run['augmentation']}).
"""
