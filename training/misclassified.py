"""The seeds' main deliverable: the most confidently misclassified test images, with GradCAM.

A grid of the ``count`` test errors whose wrong prediction had the highest
probability, each shown as the image and its GradCAM overlay for the predicted
class, titled "true -> predicted (p)". It shows CIFAR-10 pixels, so it is
written outside any committed folder (``runs/`` is git-ignored); the Hub push
may include it.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from training.reports import save_figure  # noqa: E402
from vitlab.data import CifarSplit, normalize  # noqa: E402
from vitlab.explain import EXPLAINERS, denormalize, overlay  # noqa: E402


@torch.inference_mode()
def most_confident_errors(model, data: CifarSplit, mean, std, count: int, device, batch_size: int = 1000):
    """Indices, predictions and probabilities of the ``count`` most confident wrong predictions."""
    model.eval()
    probs = []
    for i in range(0, len(data.labels), batch_size):
        x = normalize(data.images[i : i + batch_size].to(device), mean, std)
        probs.append(model(x).float().softmax(1).cpu())
    probs = torch.cat(probs)
    confidence, predicted = probs.max(1)
    wrong = (predicted != data.labels.cpu()).nonzero().flatten()
    order = wrong[confidence[wrong].argsort(descending=True)][:count]
    return order, predicted[order], confidence[order]


def save_misclassified_grid(model, config: dict, data: CifarSplit, path: Path, *, device, count: int = 10, method: str = "gradcam") -> Path:
    mean, std, classes = config["mean"], config["std"], config["classes"]
    order, predicted, confidence = most_confident_errors(model, data, mean, std, count, device)
    if len(order) == 0:
        raise ValueError("no misclassified test images")
    images = normalize(data.images[order], mean, std).to(device)
    heatmaps = EXPLAINERS[method](model, images, predicted.tolist())
    cols = min(len(order), 5)
    rows = 2 * ((len(order) + cols - 1) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, idx in enumerate(order.tolist()):
        r, c = 2 * (k // cols), k % cols
        picture = denormalize(images[k].cpu(), mean, std)
        axes[r][c].imshow(picture)
        axes[r][c].set_title(f"{classes[data.labels[idx]]} -> {classes[predicted[k]]}\n({confidence[k]:.2f})", fontsize=8)
        axes[r + 1][c].imshow(overlay(picture, heatmaps[k], opacity=0.5))
        axes[r + 1][c].set_title(method, fontsize=7)
    fig.suptitle(f"{config['model']}: most confident errors on the test set (true -> predicted)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, path)
    return path
