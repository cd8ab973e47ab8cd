"""Many users at once: concurrent `explain` calls on one shared model give the results they give alone.

pytorch-grad-cam and the rollouts attach hooks to the model; two requests on one
shared model must not see each other's activations or gradients. The app holds a
per-model lock around every hooked pass (vitlab.inference.model_lock); this test
proves it end to end through gradio_client, and counts hooks after errors.
"""
from __future__ import annotations

import gc
import time

import numpy as np
import pytest
import torch
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from PIL import Image

from test_app import png, server  # noqa: F401  (server: the app on a free port, shared fixture)

METHODS = ["gradcam", "gradcam_pp", "xgradcam", "hirescam", "layercam", "eigencam", "attention_rollout", "gradient_rollout"]
TARGETS = ["predicted", "cat", "dog", "ship"]
N_CALLS = 16


def hook_count() -> int:
    total = 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.nn.Module):
            total += len(obj._forward_hooks) + len(obj._forward_pre_hooks) + len(obj._backward_hooks)
            total += len(getattr(obj, "_backward_pre_hooks", {}))
    return total


def call(client, image, method, target):
    overlay, scores = client.predict(handle_file(image), "vit_nano_convstem", method, target, api_name="/explain")
    return np.asarray(Image.open(overlay)), scores


def test_concurrent_explains_equal_the_same_calls_made_alone(server):
    _, client, tmp = server
    images = [png(tmp / f"img{i}.png", size=(40 + 7 * i, 36), seed=i) for i in range(4)]
    requests = [(images[i % 4], METHODS[i % len(METHODS)], TARGETS[(i // 2) % len(TARGETS)]) for i in range(N_CALLS)]
    alone = [call(client, *r) for r in requests]

    start = time.perf_counter()
    jobs = [client.submit(handle_file(img), "vit_nano_convstem", m, t, api_name="/explain") for img, m, t in requests]
    together = [job.result(timeout=300) for job in jobs]
    elapsed = time.perf_counter() - start
    print(f"{N_CALLS} concurrent explain calls in {elapsed:.2f} s ({elapsed / N_CALLS * 1000:.0f} ms each on average)")

    for (overlay_alone, scores_alone), (overlay_path, scores), request in zip(alone, together, requests):
        assert np.array_equal(np.asarray(Image.open(overlay_path)), overlay_alone), request
        assert scores == scores_alone, request
    assert len({(r[1], r[2]) for r in requests}) > 4  # the calls really differ


def test_no_hooks_remain_after_errors_and_the_server_keeps_serving(server, tmp_path):
    _, client, tmp = server
    baseline = hook_count()
    good = png(tmp_path / "good.png")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    failing = [
        (str(bad), "gradcam", "predicted"),
        (good, "no_such_method", "predicted"),
        (good, "gradcam", "not_a_class"),
        (good, "gradient_rollout", "99"),
    ]
    for image, method, target in failing:
        with pytest.raises(AppError):
            client.predict(handle_file(image), "vit_nano_convstem", method, target, api_name="/explain")
        assert hook_count() == baseline, (method, target)
    overlay, scores = call(client, good, "gradcam", "predicted")
    assert overlay.ndim == 3 and 0 <= scores["deletion_auc"] <= 1
    assert hook_count() == baseline
