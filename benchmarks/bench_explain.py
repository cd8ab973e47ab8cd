"""Latency of the app's work on CPU: one full explain request, and one misclassified-gallery build.

    python benchmarks/bench_explain.py                       # bundled checkpoints (else every registry model)
    python benchmarks/bench_explain.py --models ultimus vit_nano_convstem --repeats 30

An explain request is what the Explain button runs (:func:`vitlab.inference.explain_request`):
decode a PNG, predict, Grad-CAM, attention and gradient rollout (Ultimus: its
attention maps instead), and deletion / insertion scores for each map with a
random-map baseline. p50 / p95 are over ``--repeats`` requests after one warm-up
(at least 3 requests; stops early past ``--budget`` seconds per model). Work runs
in a worker thread, as Gradio runs handlers, with ``--threads`` torch threads
(default 1, as app.py serves; ``--threads 1 2`` compares).

The gallery build is :func:`vitlab.gallery.misclassified_gallery` over the whole
CIFAR-10 test set (real data: ``$VITLAB_DATA`` or ``../shared/cifar10``), into a
fresh temporary cache so nothing is reused; models above ``--gallery-max-macs``
per image are skipped (ViT-B/16 would take an hour on two cores).

Models come from ``checkpoints/<name>/`` when there are any, else untrained
registry models with CIFAR-10 statistics: the latencies do not depend on the
weights. The machine's load average is printed, as other jobs skew the figures:
with more torch threads than free cores, OpenMP threads spin waiting for each
other, and a 2-thread run on a busy 2-core machine measured 4x slower than a
1-thread one (same results).
"""
from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from vitlab import create_model, list_models, load_checkpoint  # noqa: E402
from vitlab.cost import model_cost  # noqa: E402
from vitlab.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD, DataNotFoundError, load_cifar10  # noqa: E402
from vitlab.gallery import misclassified_gallery  # noqa: E402
from vitlab.hub import model_config  # noqa: E402
from vitlab.inference import explain_request  # noqa: E402


def bundled_or_registry(names: list[str] | None) -> list[tuple[str, torch.nn.Module, dict, str]]:
    """(name, model, config, origin) for each model to time."""
    folders = {p.name: p for p in sorted((REPO / "checkpoints").glob("*")) if (p / "config.json").is_file()}
    chosen = names or list(folders) or list_models()
    models = []
    for name in chosen:
        if name in folders:
            model, config = load_checkpoint(folders[name])
            models.append((name, model, config, f"checkpoints/{name}"))
        else:
            model = create_model(name).eval()
            size = int(model.model_args.get("image_size", 32))
            config = model_config(model, mean=CIFAR10_MEAN, std=CIFAR10_STD, classes=CIFAR10_CLASSES, image_size=size)
            models.append((name, model, config, "untrained"))
    return models


def upload_bytes(seed: int = 0) -> bytes:
    """A 64x48 PNG, decoded on every request as an upload would be."""
    pixels = np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def time_requests(model, config, repeats: int, budget_s: float) -> list[float]:
    data = upload_bytes()
    explain_request(model, config, data, "gradcam")  # warm-up: first-call allocations, lazy imports
    seconds: list[float] = []
    started = time.perf_counter()
    while len(seconds) < repeats and (len(seconds) < 3 or time.perf_counter() - started < budget_s):
        t0 = time.perf_counter()
        explain_request(model, config, data, "gradcam")
        seconds.append(time.perf_counter() - t0)
    return seconds


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def data_root() -> Path | None:
    if os.environ.get("VITLAB_DATA"):
        return None  # vitlab.data reads it
    shared = REPO.parent / "shared" / "cifar10"
    return shared if shared.is_dir() else None


def bench_explain(models, repeats: int, budget: float, worker: ThreadPoolExecutor) -> None:
    print(f"{'model':<22} {'origin':<30} {'params':>11} {'n':>4} {'p50':>8} {'p95':>8}")
    for name, model, config, origin in models:
        seconds = worker.submit(time_requests, model, config, repeats, budget).result()
        params = sum(p.numel() for p in model.parameters())
        print(f"{name:<22} {origin:<30} {params:>11,} {len(seconds):>4} "
              f"{percentile(seconds, 50):>8.3f} {percentile(seconds, 95):>8.3f}")


def time_gallery(model, config, split) -> tuple[float, float, float, int]:
    """(build wall s, build CPU s of this thread's process, cached wall s, items) into a fresh cache."""
    with tempfile.TemporaryDirectory() as cache:
        t0, cpu0 = time.perf_counter(), time.process_time()
        items = misclassified_gallery(model, config, split, cache_dir=cache)
        build, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        t0 = time.perf_counter()
        misclassified_gallery(model, config, split, cache_dir=cache)
        return build, cpu, time.perf_counter() - t0, len(items)


def bench_gallery(models, split, max_macs: float, worker: ThreadPoolExecutor) -> None:
    # CPU seconds (all threads of the process) next to wall time: with more torch threads
    # than free cores, OpenMP threads spin waiting for each other and CPU time balloons.
    print(f"{'model':<22} {'MACs/image':>12} {'build':>8} {'CPU s':>8} {'cached':>8} {'errors shown':>13}")
    for name, model, config, _ in models:
        macs = model_cost(model, int(config["image_size"])).macs
        if macs > max_macs or int(config["image_size"]) != split.images.shape[-1]:
            print(f"{name:<22} {macs / 1e6:>10.1f} M  skipped (--gallery-max-macs)")
            continue
        build, cpu, cached, count = worker.submit(time_gallery, model, config, split).result()
        print(f"{name:<22} {macs / 1e6:>10.1f} M {build:>8.2f} {cpu:>8.2f} {cached:>8.3f} {count:>13}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", help="checkpoint folder or registry names (default: see above)")
    parser.add_argument("--repeats", type=int, default=20, help="explain requests timed per model")
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of explain requests per model, at most")
    parser.add_argument("--gallery-max-macs", type=float, default=50e6, help="skip the gallery above this per image")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch intra-op thread counts to try "
                        "(default 1: what app.py serves with)")
    args = parser.parse_args(argv)

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs, load average " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))
    models = bundled_or_registry(args.models)
    try:
        split = load_cifar10(data_root(), split="test")
    except DataNotFoundError as error:
        split = None
        print(f"gallery skipped: {error}".splitlines()[0])
    # Timed in a worker thread, as Gradio runs its handlers.
    with ThreadPoolExecutor(max_workers=1) as worker:
        for threads in args.threads:
            torch.set_num_threads(threads)
            print(f"\n== {threads} torch thread(s) ==")
            print("Explain request (decode + predict + Grad-CAM + rollouts + deletion/insertion), seconds")
            bench_explain(models, args.repeats, args.budget, worker)
            if split is not None:
                print(f"Misclassified gallery over the {len(split):,} test images (fresh cache), seconds")
                bench_gallery(models, split, args.gallery_max_macs, worker)
    print("\nload average now " + " / ".join(f"{x:.2f}" for x in os.getloadavg()))


if __name__ == "__main__":
    main()
