"""The app in a real browser: upload, explain, see the label and heatmaps, open the gallery.

Uses Debian's chromium (``apt-get install chromium``) through the playwright
Python package; never ``playwright install``. Skipped when /usr/bin/chromium is
missing, except under CI=true, where that is a failure. A screenshot goes to a
temp folder and, when VITLAB_SCREENSHOT_DIR is set, there too.
"""
from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitlab import create_model, save_checkpoint
from vitlab.data import CIFAR10_CLASSES, CIFAR10_MEAN, CIFAR10_STD
from vitlab.hub import model_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]
TIMEOUT_MS = 60_000  # generous: the machine is shared with training jobs

pytestmark = pytest.mark.browser

if not CHROMIUM.exists():
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing: CI must install Debian's chromium package", pytrace=False)
    pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)", allow_module_level=True)

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    import app

    tmp = tmp_path_factory.mktemp("browser")
    for name in ("ultimus", "vit_nano_convstem"):
        torch.manual_seed(0)
        model = create_model(name)
        config = model_config(model, mean=CIFAR10_MEAN, std=CIFAR10_STD, classes=CIFAR10_CLASSES, image_size=32)
        save_checkpoint(model, tmp / "checkpoints" / name, config)
    rng = np.random.default_rng(0)
    for name in CIFAR10_CLASSES:
        (tmp / "data" / "test" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp / "data" / "test" / name / f"{i}.png")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VITLAB_CACHE", str(tmp / "cache"))
        demo = app.build_demo(checkpoints_dir=tmp / "checkpoints", data_root=tmp / "data")
        _, url, _ = demo.launch(prevent_thread_lock=True, server_port=port, quiet=True)
        try:
            yield url
        finally:
            demo.close()


@pytest.fixture(scope="module")
def page():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(TIMEOUT_MS)
            yield page
        finally:
            browser.close()


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    if os.environ.get("VITLAB_SCREENSHOT_DIR"):
        folder = Path(os.environ["VITLAB_SCREENSHOT_DIR"])
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / name)
    assert path.stat().st_size > 10_000
    return path


def test_upload_explain_and_gallery(app_url, page, tmp_path):
    expect = sync_api.expect
    upload = tmp_path / "upload.png"
    gradient = np.linspace(0, 255, 64, dtype=np.uint8)
    Image.fromarray(np.stack(np.broadcast_arrays(gradient[None, :], gradient[:, None], 255 - gradient[None, :]), -1)).save(upload)

    page.goto(app_url)
    page.locator("#input-image input[type=file]").set_input_files(str(upload))
    page.wait_for_function(  # the prediction appears on upload, before any button is pressed
        "classes => classes.some(c => document.querySelector('#explain-label').innerText.includes(c))",
        arg=list(CIFAR10_CLASSES), timeout=TIMEOUT_MS,
    )

    page.locator("#explain-button").click()
    for panel in ("#explain-view", "#explain-cam", "#explain-rollout", "#explain-gradient-rollout"):
        expect(page.locator(f"{panel} img")).to_be_visible()
    expect(page.locator("#explain-scores")).to_contain_text("deletion AUC")
    expect(page.locator("#explain-scores")).to_contain_text("gradient_rollout")
    save_screenshot(page, tmp_path, "explain.png")

    page.get_by_role("tab", name="Misclassified").click()
    page.locator("#gallery-button").click()
    thumbnails = page.locator("#gallery img")
    expect(thumbnails.first).to_be_visible()
    assert thumbnails.count() >= 1
    expect(page.locator("#gallery-note")).to_contain_text("most confident of its errors")
    expect(page.locator("#gallery")).to_contain_text("→")
    thumbnails.first.click()
    expect(page.locator("#gallery-cam img")).to_be_visible()
    expect(page.locator("#gallery-scores")).to_contain_text("deletion AUC")
    save_screenshot(page, tmp_path, "misclassified.png")
