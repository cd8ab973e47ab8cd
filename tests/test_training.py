"""training/run.py end to end on generated data: outputs, resume after SIGKILL, DDP, secrets."""
from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from training.run import main as run_main
from vitlab import load_checkpoint
from vitlab.data import load_cifar10, normalize

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--model", "ultimus", "--epochs", "3", "--batch-size", "32", "--max-lr", "0.01", "--peak-epoch", "1",
         "--threads", "1", "--seed", "3"]


def run_cli(args, env_extra=None, **kw) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    env.pop("PYTHONPATH", None)  # works as typed from a fresh clone: no install, no PYTHONPATH
    return subprocess.run([sys.executable, "training/run.py", *args], cwd=REPO, env=env, capture_output=True, text=True, **kw)


@pytest.fixture(scope="module")
def finished_run(tiny_cifar, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "ultimus"
    result = run_cli([*QUICK, "--data", str(tiny_cifar), "--out", str(out),
                      "--misclassified-dir", str(out.parent / "private")])
    assert result.returncode == 0, result.stderr[-3000:]
    return out, result


def test_run_writes_everything_a_reader_needs(finished_run):
    out, result = finished_run
    for name in ["config.json", "model.safetensors", "README.md", "metrics.json", "history.csv",
                 "classification_report.txt", "curves.png", "lr_history.png", "confusion_matrix.png"]:
        assert (out / name).is_file(), name
    assert not (out / "training_state.safetensors").exists()
    assert not list(out.glob("*.png")) or not (out / "misclassified_gradcam.png").exists()  # pixels stay out
    assert (out.parent / "private" / "misclassified_gradcam.png").is_file()
    history = list(csv.DictReader(open(out / "history.csv")))
    assert [int(h["epoch"]) for h in history] == [1, 2, 3]
    assert set(history[0]) == {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["confusion_matrix"]) == 10 and sum(map(sum, metrics["confusion_matrix"])) == 100
    assert metrics["test_accuracy"] == pytest.approx(float(history[-1]["test_acc"]), abs=1e-3)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: pytorch") and "datasets:\n- cifar10" in card
    assert f"{metrics['test_accuracy']:.2f}%" in card and "python training/run.py --model ultimus" in card
    assert "epoch   3/3" in result.stdout + result.stderr  # the one-line summary per epoch


def test_recorded_accuracy_reproduces_from_the_checkpoint(finished_run, tiny_cifar):
    out, _ = finished_run
    model, config = load_checkpoint(out)
    test = load_cifar10(tiny_cifar, split="test")
    with torch.no_grad():
        predicted = model(normalize(test.images, config["mean"], config["std"])).argmax(1)
    accuracy = 100.0 * (predicted == test.labels).float().mean().item()
    assert accuracy == pytest.approx(json.loads((out / "metrics.json").read_text())["test_accuracy"], abs=1e-6)


def test_lr_never_negative_in_a_real_run(finished_run):
    out, _ = finished_run
    assert all(float(h["lr"]) >= 0 for h in csv.DictReader(open(out / "history.csv")))


def test_find_lr_only_writes_the_curve(tiny_cifar, tmp_path):
    result = run_cli(["--model", "ultimus", "--find-lr", "--lr-finder-steps", "20", "--batch-size", "32",
                      "--data", str(tiny_cifar), "--out", str(tmp_path), "--threads", "1"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "lr_finder.png").is_file()
    finder = json.loads((tmp_path / "lr_finder.json").read_text())
    assert finder["suggested_lr"] > 0 and len(finder["lrs"]) == len(finder["losses"]) > 5
    assert not (tmp_path / "model.safetensors").exists()


def test_bad_arguments_and_unwritable_output_fail_before_training(tiny_cifar, tmp_path):
    result = run_cli(["--model", "ultimus", "--max-lr", "-3", "--data", str(tiny_cifar)])
    assert result.returncode != 0 and "--max-lr" in result.stderr
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = run_cli(["--model", "ultimus", "--max-lr", "0.01", "--data", str(tiny_cifar), "--out", str(blocker / "sub")])
    assert result.returncode != 0 and "not writable" in result.stderr
    assert "epoch" not in result.stdout


def test_sigkill_mid_run_then_resume_matches_an_uninterrupted_run(tiny_cifar, tmp_path):
    args = ["--model", "vit_nano_convstem", "--epochs", "3", "--batch-size", "16", "--max-lr", "0.003",
            "--peak-epoch", "1", "--threads", "1", "--seed", "5", "--data", str(tiny_cifar)]
    straight = run_cli([*args, "--out", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr[-2000:]

    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "training/run.py", *args, "--out", str(out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    history = out / "history.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().strip().splitlines()) >= 2:  # epoch 1 complete
            break
        time.sleep(0.02)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    model, _ = load_checkpoint(out)  # what a loader finds after the kill is a complete checkpoint

    resumed = run_cli([*args, "--out", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    a = json.loads((tmp_path / "straight" / "metrics.json").read_text())
    b = json.loads((out / "metrics.json").read_text())
    assert b["confusion_matrix"] == a["confusion_matrix"]
    assert b["test_accuracy"] == a["test_accuracy"]
    rows = lambda p: [{k: v for k, v in r.items() if k != "seconds"} for r in csv.DictReader(open(p))]  # noqa: E731
    assert rows(out / "history.csv") == rows(tmp_path / "straight" / "history.csv")


def test_ddp_two_cpu_processes_keep_identical_weights(tiny_cifar, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "training/run.py", "--model", "ultimus", "--epochs", "2", "--batch-size", "16", "--max-lr", "0.01",
           "--peak-epoch", "1", "--device", "cpu", "--data", str(tiny_cifar), "--out", str(tmp_path / "ddp"),
           "--misclassified-dir", str(tmp_path / "private")]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    ddp = metrics["distributed"]
    assert ddp["world_size"] == 2 and ddp["in_sync"]
    assert ddp["weight_checksums"][0] == ddp["weight_checksums"][1]
    assert metrics["test_images"] == 100  # both shards of the test set were counted
    assert "torchrun --nproc_per_node=2" in (tmp_path / "ddp" / "README.md").read_text()


def test_hf_token_never_lands_in_any_file_or_output(tiny_cifar, tmp_path, monkeypatch, capsys):
    """Push with a secret token: the upload is intercepted at huggingface_hub; grep every written file."""
    import huggingface_hub

    token = "hf_SECRETtokenVALUE1234567890"
    monkeypatch.setenv("HF_TOKEN", token)
    uploads = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kw):
            uploads.append(("create", repo_id))

        def upload_folder(self, **kw):
            uploads.append(("folder", kw["repo_id"]))
            return "https://huggingface.co/x/y/commit/1"

        def upload_file(self, **kw):
            uploads.append(("file", kw["path_in_repo"]))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    out = tmp_path / "out"
    run_main([*QUICK, "--epochs", "1", "--peak-epoch", "0.5", "--data", str(tiny_cifar), "--out", str(out), "--push-to-hub", "me/vitlab-test",
              "--misclassified-dir", str(tmp_path / "private")])
    assert ("create", "me/vitlab-test") in uploads and ("folder", "me/vitlab-test") in uploads
    captured = capsys.readouterr()
    assert token not in captured.out + captured.err
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
