"""vitlab's Gradio app: predict, explain, browse a model's worst test errors, read its training report.

    python app.py                 # http://0.0.0.0:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT override)

Environment: ``VITLAB_MODELS`` (extra Hub repo ids), ``VITLAB_DATA`` (CIFAR-10),
``VITLAB_CACHE`` (gallery / decoded-data caches), ``VITLAB_TORCH_THREADS`` (default 1).

Models: every checkpoint folder in ``checkpoints/`` plus the Hub repo ids in
``VITLAB_MODELS`` (comma-separated), loaded once at startup and only read
afterwards; one that fails to load is listed with its error. Test images for
the Misclassified tab come from ``VITLAB_DATA`` (else ``../shared/cifar10`` next
to the repo, else vitlab's download folder) at run time; nothing is written
into the repo.

This file is the UI only (layout, event wiring, launch): decoding and checking
images is :mod:`vitlab.images`, running and explaining models
:mod:`vitlab.inference`, the error ranking :mod:`vitlab.gallery`.

API (``gradio_client``): ``/predict`` (image, model) -> class probabilities;
``/explain`` (image, model, method, target) -> (overlay image, scores);
``/misclassified`` (model) -> the gallery.

References: gradio Blocks, queue and ``gr.Progress`` docs (https://www.gradio.app/docs);
hysts' Spaces (app.py for the UI, model code elsewhere).
"""
from __future__ import annotations

import base64
import os
import threading
from pathlib import Path

import gradio as gr
import torch
from PIL import Image

from vitlab.data import DATA_ENV, DataNotFoundError, load_cifar10
from vitlab.explain import EXPLAINERS, explainers_for
from vitlab.gallery import misclassified_gallery
from vitlab.images import MAX_FILE_BYTES, ImageError, load_image
from vitlab.inference import (
    PREDICTED,
    ROLLOUTS,
    ExplainReport,
    ServedModel,
    checkpoint_sources,
    enlarge,
    explain_image,
    explain_request,
    load_models,
    model_card,
    predict,
)

HERE = Path(__file__).resolve().parent
CHECKPOINTS = HERE / "checkpoints"
SHARED_DATA = HERE.parent / "shared" / "cifar10"
MODELS_ENV = "VITLAB_MODELS"
DEFAULT_MODEL = "vit_nano_convstem"  # the CPU-trained checkpoint, selected first when present
GALLERY_SIZE = 24
PLOT_FILES = ("confusion_matrix.png", "curves.png", "lr_history.png", "lr_finder.png")  # written by training/run.py
THUMBNAIL_SIDE = 96  # gallery thumbnails: 32 px test images enlarged 3x, nearest neighbour
DATA_HELP = (
    "No CIFAR-10 test set found{where}. To provide one, either set `VITLAB_DATA` to a CIFAR-10 folder "
    "(`test/<class>/*.jpg`, e.g. `../shared/cifar10`, or torchvision's `cifar-10-batches-py`) and restart, "
    "or let torchvision download it once (needs internet, ~170 MB): "
    "`python -c \"from vitlab.data import load_cifar10; load_cifar10(split='test', download=True)\"`."
)


def decode_upload(payload) -> Image.Image | None:
    """An uploaded image (Gradio's ``ImageData``) decoded and checked by :func:`vitlab.images.load_image`.

    Bad files become a ``gr.Error`` with vitlab's short message.
    """
    if payload is None:
        return None
    try:
        if payload.path:
            return load_image(payload.path)
        if payload.url and payload.url.startswith("data:"):
            data = payload.url.partition(",")[2]
            if len(data) > MAX_FILE_BYTES * 4 // 3 + 4:
                raise ImageError(f"the image is larger than {MAX_FILE_BYTES // 2**20} MB")
            return load_image(base64.b64decode(data))
    except ImageError as error:
        raise gr.Error(str(error), print_exception=False) from None
    raise gr.Error("no image data received", print_exception=False)


def checked_image(**kwargs) -> gr.Image:
    """A ``gr.Image`` input whose uploads are decoded by :func:`decode_upload` into RGB PIL images.

    Gradio's own ``Image.preprocess`` opens every upload with Pillow (and, unless
    ``image_mode=None``, decodes it in full, below Pillow's 179-megapixel bomb
    limit) before any handler runs, so a corrupt or hostile file fails there
    with an unhelpful error. This instance's ``preprocess`` is replaced instead;
    a subclass would do the same, but Gradio writes a ``.pyi`` stub next to the
    source file of every Component subclass (``component_meta.py``).
    """
    image = gr.Image(type="filepath", image_mode=None, **kwargs)
    image.preprocess = decode_upload
    return image


def default_data_root() -> Path | None:
    """``$VITLAB_DATA`` (read by vitlab.data), else the shared copy beside the repo, else vitlab's default."""
    if not os.environ.get(DATA_ENV) and SHARED_DATA.is_dir():
        return SHARED_DATA
    return None


class TestSet:
    """The CIFAR-10 test split, loaded on first use and kept (30 MB); thread-safe."""

    def __init__(self, root: Path | None):
        self.root = root
        self.lock = threading.Lock()
        self.split = None

    def get(self):
        with self.lock:
            if self.split is None:
                self.split = load_cifar10(self.root, split="test")
            return self.split


def scores_markdown(report: ExplainReport) -> str:
    agnostic = " (attention rollout is class-agnostic)" if "attention_rollout" in report.results else ""
    rows = [
        f"Explaining **{report.target}**{agnostic}. "
        "Deletion AUC: lower is better; insertion AUC: higher is better; in brackets a random map's score.",
        "",
        "| method | deletion AUC ↓ (random) | insertion AUC ↑ (random) |",
        "|---|---:|---:|",
    ]
    for method, result in report.results.items():
        s = result.scores
        rows.append(
            f"| {method} | {s['deletion_auc']:.3f} ({s['random_deletion_auc']:.3f}) "
            f"| {s['insertion_auc']:.3f} ({s['random_insertion_auc']:.3f}) |"
        )
    return "\n".join(rows)


def build_demo(
    sources: list[str] | None = None,
    *,
    checkpoints_dir: str | os.PathLike | None = None,
    data_root: str | os.PathLike | None = None,
) -> gr.Blocks:
    """The app. ``sources`` (checkpoint folders / Hub ids) default to ``checkpoints_dir``
    (default ``checkpoints/``) plus ``$VITLAB_MODELS``; ``data_root`` to :func:`default_data_root`."""
    if sources is None:
        sources = checkpoint_sources(checkpoints_dir or CHECKPOINTS, os.environ.get(MODELS_ENV))
    models, failures = load_models(sources)
    cards = {name: model_card(served) for name, served in models.items()}
    test_set = TestSet(Path(data_root) if data_root is not None else default_data_root())
    names = list(models)
    all_targets = [PREDICTED] + sorted({c for entry in models.values() for c in entry.config["classes"]})
    first = DEFAULT_MODEL if DEFAULT_MODEL in models else (names[0] if names else None)

    def served(name: str | None) -> ServedModel:
        if name not in models:
            raise gr.Error(f"no model named {name!r}; loaded: {', '.join(names) or 'none'}")
        return models[name]

    def cam_methods(name: str | None) -> list[str]:
        return [m for m in explainers_for(models[name].model) if m not in ROLLOUTS] if name in models else []

    def default_cam(name: str | None) -> str | None:
        methods = cam_methods(name)
        return "gradcam" if "gradcam" in methods else (methods[0] if methods else None)

    def target_choices(name: str | None) -> list[str]:
        return [PREDICTED] + (list(models[name].config["classes"]) if name in models else [])

    def require_image(image):
        if image is None:
            raise gr.Error("upload an image first")
        return image

    # ------------------------------------------------------------------ handlers

    def on_predict(image, model):
        if image is None or model not in models:
            return None
        entry = served(model)
        return predict(entry.model, entry.config, image)

    def on_explain_api(image, model, method, target):
        """One explainer: (overlay image, scores dict) for the API."""
        entry = served(model)
        try:
            result = explain_image(entry.model, entry.config, require_image(image), method, target or PREDICTED)
        except (ImageError, ValueError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        return result.overlay, {"method": result.method, "target": result.target, **result.scores}

    def panel_outputs(entry: ServedModel, image, method, target, opacity):
        try:
            report = explain_request(entry.model, entry.config, image, method, target or PREDICTED, float(opacity))
        except (ImageError, ValueError) as error:
            raise gr.Error(str(error), print_exception=False) from None
        results = report.results
        has_rollouts = all(m in results for m in ROLLOUTS)
        return (
            report.probabilities,
            report.view,
            results[method].overlay,
            gr.update(value=results["attention_rollout"].overlay if has_rollouts else None, visible=has_rollouts),
            gr.update(value=results["gradient_rollout"].overlay if has_rollouts else None, visible=has_rollouts),
            gr.update(
                value=[(m, f"block {i + 1}") for i, m in enumerate(report.attention_maps)] or None,
                visible=bool(report.attention_maps),
            ),
            scores_markdown(report),
        )

    def on_explain_panels(image, model, method, target, opacity):
        return panel_outputs(served(model), require_image(image), method, target, opacity)

    def on_model_change(name):
        return (
            gr.update(choices=cam_methods(name), value=default_cam(name)),
            gr.update(choices=target_choices(name), value=PREDICTED),
        )

    def on_build_gallery(model, progress=gr.Progress()):
        entry = served(model)
        try:
            split = test_set.get()
        except DataNotFoundError:
            where = f" under {test_set.root}" if test_set.root else ""
            return [], [], DATA_HELP.format(where=where)
        except ValueError as error:  # a folder that is not CIFAR-10
            return [], [], f"The test data could not be read: {error}"
        try:
            items = misclassified_gallery(
                entry.model, entry.config, split, top_k=GALLERY_SIZE,
                progress=lambda fraction: progress(fraction, desc="Classifying the test set"),
            )
        except ValueError as error:  # e.g. a model trained on other classes
            return [], [], f"No gallery for {model}: {error}"
        thumbs = [(enlarge(split.images[i.index].permute(1, 2, 0).numpy(), THUMBNAIL_SIDE), i.caption) for i in items]
        note = f"{model}: the {len(items)} most confident of its errors on the {len(split):,} test images."
        return thumbs, [(model, item.index) for item in items], note

    def on_gallery_select(state, method, evt: gr.SelectData):
        if not state or evt.index is None or evt.index >= len(state):
            raise gr.Error("build the gallery first")
        name, index = state[evt.index]
        entry = served(name)
        split = test_set.get()
        image = split.images[index].permute(1, 2, 0).numpy()
        if method not in cam_methods(name):
            method = default_cam(name)
        *panels, scores = panel_outputs(entry, image, method, PREDICTED, 0.5)
        true = split.classes[int(split.labels[index])]
        return *panels, f"Test image #{index} ({name}), true class **{true}**.\n\n{scores}"

    def on_model_card(model):
        card = cards.get(model)
        plots = [card.plots.get(f) if card else None for f in PLOT_FILES]
        return (
            card.summary if card else "No model loaded.",
            card.architecture if card else "",
            *(gr.update(value=plot, visible=plot is not None) for plot in plots),
        )

    # ------------------------------------------------------------------ layout

    def explanation_panels(prefix: str):
        label = gr.Label(num_top_classes=5, label="Prediction", elem_id=f"{prefix}-label")
        with gr.Row():
            view = gr.Image(label="What the model sees", format="png", interactive=False, elem_id=f"{prefix}-view")
            cam = gr.Image(label="CAM", format="png", interactive=False, elem_id=f"{prefix}-cam")
            rollout = gr.Image(label="Attention rollout", format="png", interactive=False, elem_id=f"{prefix}-rollout")
            grad_rollout = gr.Image(
                label="Gradient rollout", format="png", interactive=False, elem_id=f"{prefix}-gradient-rollout"
            )
        maps = gr.Gallery(
            label="Ultimus attention maps (8x8, one per block)", columns=4, height="auto", format="png",
            visible=False, elem_id=f"{prefix}-ultimus-maps",
        )
        scores = gr.Markdown(label="scores", elem_id=f"{prefix}-scores")
        return [label, view, cam, rollout, grad_rollout, maps, scores]

    # Uploads land in Gradio's temp dir; delete_cache purges them (every 10 min, older than
    # 10 min, and at shutdown) so user images are not kept.
    with gr.Blocks(title="vitlab: explain vision transformers", delete_cache=(600, 600)) as demo:
        gr.Markdown(
            "# vitlab\nCIFAR-10 vision transformers and Ultimus: predictions, CAMs, attention rollouts, "
            "and how faithful each explanation is (deletion / insertion against a random map)."
        )
        if failures:
            gr.Markdown(
                "**Models that failed to load** (the others work):\n"
                + "\n".join(f"- `{name}`: {error}" for name, error in failures.items()),
                elem_id="load-errors",
            )
        if not models:
            gr.Markdown(
                "**No models loaded.** Train one with `python training/run.py --out checkpoints/NAME`, "
                f"or list Hub repo ids in `{MODELS_ENV}`."
            )

        with gr.Tab("Explain", id="explain"):
            with gr.Row():
                with gr.Column(scale=1):
                    image = checked_image(sources=["upload", "clipboard", "webcam"], label="Image", elem_id="input-image")
                    model_choice = gr.Dropdown(names, value=first, label="Model", elem_id="explain-model")
                    method = gr.Dropdown(cam_methods(first), value=default_cam(first), label="CAM method", elem_id="cam-method")
                    target = gr.Dropdown(target_choices(first), value=PREDICTED, label="Explain class", elem_id="target")
                    opacity = gr.Slider(0.0, 1.0, value=0.5, step=0.05, label="Heatmap opacity")
                    explain_button = gr.Button("Explain", variant="primary", elem_id="explain-button")
                with gr.Column(scale=3):
                    panels = explanation_panels("explain")

        with gr.Tab("Misclassified", id="misclassified"):
            with gr.Row():
                gallery_model = gr.Dropdown(names, value=first, label="Model", elem_id="gallery-model")
                gallery_method = gr.Dropdown(
                    cam_methods(first), value=default_cam(first), label="CAM method for a selected image"
                )
                build_button = gr.Button("Find the most confident errors", variant="primary", elem_id="gallery-button")
            gallery_note = gr.Markdown(
                "Runs the model over the whole CIFAR-10 test set (once per model; the ranking is cached "
                "outside the repo), then shows its most confident mistakes. Click one to explain it.",
                elem_id="gallery-note",
            )
            gallery = gr.Gallery(
                label="true → predicted (confidence)", columns=8, height="auto", format="png",
                allow_preview=False, elem_id="gallery",
            )
            gallery_state = gr.State([])
            gallery_panels = explanation_panels("gallery")

        with gr.Tab("Model", id="model"):
            card_model = gr.Dropdown(names, value=first, label="Model", elem_id="card-model")
            card_summary = gr.Markdown(elem_id="card-summary")
            with gr.Row():
                confusion = gr.Image(label="Confusion matrix", interactive=False)
                curves = gr.Image(label="Training curves", interactive=False)
            with gr.Row():
                lr_history = gr.Image(label="Learning rate", interactive=False)
                lr_finder = gr.Image(label="LR range test", interactive=False)
            architecture = gr.Code(label="Architecture: per-layer parameters and MACs (vitlab.cost)", language=None)

        # The API-only `explain` endpoint, on hidden components: its method may be any
        # explainer (rollouts included) and its target any class of any loaded model.
        with gr.Row(visible=False):
            api_image = checked_image(label="image")
            api_model = gr.Dropdown(names, value=first, label="model")
            api_method = gr.Dropdown(list(EXPLAINERS), value="gradcam", label="method")
            api_target = gr.Dropdown(all_targets, value=PREDICTED, allow_custom_value=True, label="target")
            api_overlay = gr.Image(label="overlay", format="png")
            api_scores = gr.JSON(label="scores")
            api_button = gr.Button()

        # ------------------------------------------------------------------ events

        image.change(on_predict, [image, model_choice], panels[0], api_name="predict")
        model_choice.change(on_predict, [image, model_choice], panels[0], api_visibility="private")
        model_choice.change(on_model_change, model_choice, [method, target], api_visibility="private")
        explain_button.click(
            on_explain_panels, [image, model_choice, method, target, opacity], panels, api_name="explain_panels"
        )
        api_button.click(
            on_explain_api, [api_image, api_model, api_method, api_target], [api_overlay, api_scores], api_name="explain"
        )
        gallery_model.change(
            lambda name: gr.update(choices=cam_methods(name), value=default_cam(name)), gallery_model, gallery_method,
            api_visibility="private",
        )
        build_button.click(
            on_build_gallery, gallery_model, [gallery, gallery_state, gallery_note], api_name="misclassified",
            concurrency_limit=1, concurrency_id="gallery",
        )
        gallery.select(on_gallery_select, [gallery_state, gallery_method], gallery_panels, api_visibility="private")
        card_outputs = [card_summary, architecture, confusion, curves, lr_history, lr_finder]
        card_model.change(on_model_card, card_model, card_outputs, api_visibility="private")
        demo.load(on_model_card, card_model, card_outputs, api_visibility="private")

    # Two CPU cores: explanations are CPU-bound and each model serves one request at a
    # time under its lock, so more workers than cores only add contention (one torch
    # thread each: see __main__). max_size bounds the backlog: 32 requests are seconds
    # of work for the bundled models (0.03-0.2 s each); beyond it a user is told at
    # once that the queue is full instead of waiting into a timeout. The gallery has
    # its own limit of 1 (concurrency_id "gallery"): it classifies 10,000 images.
    demo.queue(default_concurrency_limit=2, max_size=32)
    return demo


if __name__ == "__main__":
    # One torch thread per request: the queue runs two at once on two cores, and with more
    # threads than free cores OpenMP threads spin waiting for each other (on the shared dev
    # machine a 2-thread explain request measured up to 30x slower than a 1-thread one).
    torch.set_num_threads(int(os.environ.get("VITLAB_TORCH_THREADS", "1")))
    build_demo().launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
        max_file_size=MAX_FILE_BYTES,  # uploads above vitlab.images' limit are refused before they are stored
    )
