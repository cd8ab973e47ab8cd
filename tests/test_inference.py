"""vitlab.inference: predictions, explanations for every model x explainer, the per-model lock."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from vitlab import create_model, list_models
from vitlab.explain import explainers_for
from vitlab.hub import model_config
from vitlab.images import ImageError
from vitlab.inference import (
    DISPLAY_MIN_SIDE,
    ExplainResult,
    enlarge,
    explain_image,
    explain_request,
    model_lock,
    predict,
)
from vitlab.models.vit import Attention

CLASSES = [f"class{i}" for i in range(10)]
# Small versions of the big presets, so every registry model is tested in seconds.
TINY = {
    "vit": dict(dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64),
    "vit_conv": dict(dim=32, depth=2, heads=2, dim_head=16, mlp_dim=64),
    "vit_b16": dict(image_size=32, patch_size=8, dim=32, depth=2, heads=2, mlp_dim=64),
}
SCORE_KEYS = {"deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc"}


def tiny_model(name: str):
    torch.manual_seed(0)
    model = create_model(name, **TINY.get(name, {})).eval()
    size = model.model_args.get("image_size", 32)
    return model, model_config(model, mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), classes=CLASSES, image_size=size)


def photo(seed: int = 0, size=(48, 40)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


MODEL_METHODS = [(name, method) for name in list_models() for method in explainers_for(tiny_model(name)[0])]


@pytest.mark.parametrize("name", list_models())
def test_predict_sums_to_one_and_is_sorted(name):
    model, config = tiny_model(name)
    probabilities = predict(model, config, photo())
    assert set(probabilities) == set(CLASSES)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    values = list(probabilities.values())
    assert values == sorted(values, reverse=True)


@pytest.mark.parametrize(("name", "method"), MODEL_METHODS)
def test_explain_image_shapes_and_scores(name, method):
    model, config = tiny_model(name)
    result = explain_image(model, config, photo(), method, target="class3", opacity=0.4)
    assert isinstance(result, ExplainResult) and result.method == method
    size = config["image_size"]
    assert result.heatmap.shape == (size, size) and result.heatmap.dtype == np.float32
    assert np.isfinite(result.heatmap).all() and 0 <= result.heatmap.min() and result.heatmap.max() <= 1
    assert result.overlay.dtype == np.uint8 and result.overlay.shape[2] == 3
    assert min(result.overlay.shape[:2]) >= DISPLAY_MIN_SIDE
    assert result.target == "class3"
    assert set(result.scores) == SCORE_KEYS
    assert all(0.0 <= v <= 1.0 for v in result.scores.values())
    assert not any(module._forward_hooks or module._backward_hooks for module in model.modules())
    assert not any(m.fused for m in model.modules() if isinstance(m, Attention))


def test_explain_request_token_model_and_ultimus():
    model, config = tiny_model("vit_nano_convstem")
    report = explain_request(model, config, photo(), "gradcam")
    assert list(report.results) == ["gradcam", "attention_rollout", "gradient_rollout"]
    assert report.target == next(iter(report.probabilities))  # "predicted" by default
    assert report.view.shape == (224, 224, 3) and report.attention_maps == []
    assert {r.target for r in report.results.values()} == {report.target}

    model, config = tiny_model("ultimus")
    report = explain_request(model, config, photo(), "layercam", target=2)
    assert list(report.results) == ["layercam"]
    assert report.target == "class2"
    assert len(report.attention_maps) == 4
    assert all(m.dtype == np.uint8 and m.shape[2] == 3 for m in report.attention_maps)


def test_explanation_moves_with_the_target():
    model, config = tiny_model("vit_nano_convstem")
    image = photo(3)
    by_name = explain_image(model, config, image, "gradient_rollout", target="class1")
    by_index = explain_image(model, config, image, "gradient_rollout", target=1)
    other = explain_image(model, config, image, "gradient_rollout", target="class7")
    assert np.array_equal(by_name.heatmap, by_index.heatmap)
    assert not np.allclose(by_name.heatmap, other.heatmap)


def test_bad_requests_are_refused():
    model, config = tiny_model("ultimus")
    with pytest.raises(ImageError):
        predict(model, config, b"not an image")
    with pytest.raises(ValueError, match="does not apply"):
        explain_image(model, config, photo(), "attention_rollout")
    with pytest.raises(ValueError, match="unknown class"):
        explain_image(model, config, photo(), "gradcam", target="zebra")
    with pytest.raises(ValueError, match="out of range"):
        explain_image(model, config, photo(), "gradcam", target=10)


def test_enlarge_keeps_pixels_square():
    view = photo(size=(32, 32))
    big = enlarge(view)
    assert big.shape == (224, 224, 3)
    assert np.array_equal(big[::7, ::7], view)


def test_one_reentrant_lock_per_model():
    a, _ = tiny_model("ultimus")
    b, _ = tiny_model("ultimus")
    assert model_lock(a) is model_lock(a) and model_lock(a) is not model_lock(b)
    with model_lock(a), model_lock(a):
        pass


def test_explain_and_predict_wait_for_the_models_lock():
    model, config = tiny_model("vit_nano_convstem")
    done: list[str] = []
    workers = [
        threading.Thread(target=lambda: done.append(str(explain_image(model, config, photo(), "gradcam").target))),
        threading.Thread(target=lambda: done.append(next(iter(predict(model, config, photo()))))),
    ]
    with model_lock(model):
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(0.5)
        assert done == [] and all(worker.is_alive() for worker in workers)
    for worker in workers:
        worker.join(30)
    assert len(done) == 2


def test_concurrent_explanations_equal_serial_ones():
    """Two threads hooking the same model with different targets get what serial calls get."""
    model, config = tiny_model("vit_nano_convstem")
    image = photo(5)
    jobs = [("gradcam", "class0"), ("gradcam", "class9"), ("gradient_rollout", "class0"), ("gradient_rollout", "class9")]
    serial = {job: explain_image(model, config, image, *job).heatmap for job in jobs}
    assert not np.allclose(serial[jobs[0]], serial[jobs[1]])

    results: dict[tuple[int, tuple[str, str]], np.ndarray] = {}
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            for round_ in range(3):
                for job in jobs[thread::2]:
                    results[thread, job, round_] = explain_image(model, config, image, *job).heatmap
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert len(results) == 12
    for (_, job, _), heatmap in results.items():
        np.testing.assert_allclose(heatmap, serial[job], atol=1e-5)
