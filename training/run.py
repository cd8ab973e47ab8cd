"""Train a vitlab model on CIFAR-10: ``python training/run.py --model NAME [options]``.

Every option is a field of :class:`Config` below (with its unit or reason);
the command-line flags are generated from it. A run writes into ``--out``:
``config.json`` + ``model.safetensors`` (every epoch, atomically), a resumable
``training_state.safetensors`` while it runs, ``history.csv``, ``metrics.json``,
``classification_report.txt``, plots and a Hugging Face model card
``README.md``. The misclassified-images GradCAM grid shows CIFAR-10 pixels, so
it goes to ``--misclassified-dir`` (under the git-ignored ``runs/``), never into
a checkpoint folder that gets committed.

Examples:

    python training/run.py --model vit_nano_convstem --epochs 24
    python training/run.py --model ultimus --find-lr             # LR range test only
    python training/run.py --model vit --max-lr auto --out runs/vit --resume
    torchrun --nproc_per_node=2 training/run.py --model vit_nano_convstem
    python training/run.py --model ultimus --push-to-hub me/vitlab-ultimus

References: Smith & Topin 2017 (One-Cycle), Smith 2017 (LR range test),
karpathy/nanoGPT ``train.py`` (config dataclass), KellerJordan/cifar10-airbench
(tensor data loading).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # `python training/run.py` from a fresh clone: make `vitlab` and `training` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from training import reports  # noqa: E402
from training.engine import (  # noqa: E402
    TRAINING_STATE_FILE,
    TrainSetup,
    evaluate,
    init_distributed,
    load_training_state,
    loss_fn,
    pick_device,
    prepare_inputs,
    save_training_state,
    train_one_epoch,
)
from training.lr_finder import lr_range_test  # noqa: E402
from training.schedule import OneCycle  # noqa: E402
from vitlab.cost import model_cost  # noqa: E402
from vitlab.data import CIFAR10_MEAN, CIFAR10_STD, BatchAugment, CifarSplit, load_cifar10, shard  # noqa: E402
from vitlab.hub import model_config, push_to_hub, save_checkpoint, unwrap  # noqa: E402
from vitlab.models import create_model, list_models  # noqa: E402


def opt(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class Config:
    # what to train
    model: str = opt("vit_nano_convstem", "registry name", choices=list_models())
    model_args: str = opt("{}", 'JSON constructor overrides, e.g. \'{"batch_norm": true}\'')
    data: str | None = opt(None, "CIFAR-10 folder (ImageFolder or torchvision format); default $VITLAB_DATA, then the user cache")
    download: bool = opt(False, "download CIFAR-10 with torchvision if it is not found (needs internet)")
    train_subset: int = opt(0, "train on the first N images of a seeded shuffle (0 = all 50,000); for quick runs")
    test_subset: int = opt(0, "evaluate on the first N test images of a seeded shuffle (0 = all 10,000)")
    # optimisation
    epochs: int = opt(24, "epochs (the course's runs: 24)")
    batch_size: int = opt(256, "images per optimizer step (per process under torchrun)")
    optimizer: str = opt("adam", "adam, adamw or sgd", choices=["adam", "adamw", "sgd"])
    weight_decay: float = opt(0.0, "L2 (adam/sgd) or decoupled (adamw) weight decay")
    momentum: float = opt(0.9, "SGD momentum (its upper bound when cycling)")
    nesterov: bool = opt(False, "Nesterov momentum for SGD")
    l1_weight: float = opt(0.0, "L1 penalty on weight matrices/kernels (seed 002 used L1)")
    label_smoothing: float = opt(0.0, "cross-entropy label smoothing")
    # augmentation (batched tensor ops on the device)
    crop_padding: int = opt(4, "random crop after zero padding of this many pixels (0 = off)")
    flip: bool = opt(True, "random horizontal flip")
    cutout: int = opt(0, "cutout square side in pixels (0 = off)")
    # One-Cycle
    max_lr: str = opt("auto", "One-Cycle peak LR: a number, or 'auto' = the LR range test's suggestion")
    peak_epoch: float = opt(5.0, "epoch at which the LR peaks (the seeds: 5 of 24)")
    div_factor: float = opt(25.0, "initial LR = max_lr / div_factor")
    final_div_factor: float = opt(1e4, "final LR = initial LR / final_div_factor")
    anneal: str = opt("linear", "annealing shape", choices=["linear", "cos"])
    three_phase: bool = opt(False, "three-phase One-Cycle (up, symmetric down, final decay)")
    cycle_momentum: bool = opt(True, "cycle momentum / Adam beta1 inversely to the LR (0.95 -> 0.85 -> 0.95)")
    # LR range test
    find_lr: bool = opt(False, "run only the LR range test: write lr_finder.png/json and exit")
    lr_finder_steps: int = opt(200, "batches in the LR range test")
    lr_finder_start: float = opt(1e-6, "LR range test start LR")
    lr_finder_end: float = opt(1.0, "LR range test end LR")
    # run
    seed: int = opt(0, "seed for initialisation, data order, augmentation, dropout")
    device: str = opt("auto", "auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    threads: int = opt(0, "torch CPU threads (0 = torch's default); fixed threads make CPU runs bit-reproducible")
    amp: str = opt("none", "autocast dtype on the device", choices=["none", "bf16", "fp16"])
    channels_last: bool = opt(False, "channels_last memory format (GPU convolution speed)")
    compile: bool = opt(False, "torch.compile the model for training (the saved weights are the same)")
    out: str = opt("", "output folder (default runs/<model>)")
    misclassified_dir: str = opt("", "where the misclassified-images GradCAM grid goes (default runs/<model>-misclassified; never commit it)")
    resume: bool = opt(False, "continue from <out>/training_state.safetensors (the last completed epoch)")
    push_to_hub: str | None = opt(None, "Hub repo id to create/upload to (token: $HF_TOKEN or the login cache)")
    private: bool = opt(False, "create the Hub repo as private")


def parse_args(argv: list[str] | None = None) -> Config:
    """Command-line flags generated from :class:`Config`, one per field."""
    parser = argparse.ArgumentParser(
        prog="python training/run.py", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    for f in dataclasses.fields(Config):
        flag = "--" + f.name.replace("_", "-")
        extra = {k: v for k, v in f.metadata.items() if k != "help"}
        if f.type in ("bool", bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            kind = {"int": int, "float": float}.get(str(f.type), str)
            parser.add_argument(flag, type=kind, default=f.default, help=f.metadata["help"], **extra)
    cfg = Config(**vars(parser.parse_args(argv)))
    if cfg.max_lr != "auto":
        try:
            if float(cfg.max_lr) <= 0:
                raise ValueError
        except ValueError:
            parser.error(f"--max-lr must be a positive number or 'auto', not {cfg.max_lr!r}")
    try:
        if not isinstance(json.loads(cfg.model_args), dict):
            raise ValueError
    except ValueError:
        parser.error(f"--model-args must be a JSON object, not {cfg.model_args!r}")
    return cfg


def log(msg: str, is_main: bool = True) -> None:
    if is_main:
        tqdm.write(msg)


def check_output_folder(out: Path, min_free_bytes: int) -> None:
    """Fail before training if the output folder cannot be written or the disk is nearly full."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write_probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise SystemExit(f"error: output folder {out} is not writable: {e.strerror or e}") from None
    free = shutil.disk_usage(out).free
    if free < min_free_bytes:
        raise SystemExit(f"error: only {free / 2**20:.0f} MiB free at {out}; this run needs about {min_free_bytes / 2**20:.0f} MiB")


def subset(split: CifarSplit, n: int, seed: int) -> CifarSplit:
    if not n or n >= len(split):
        return split
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))[:n]
    return CifarSplit(split.images[order], split.labels[order], split.classes)


def make_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    params = model.parameters()
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=0.1, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
    cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=1e-3, weight_decay=cfg.weight_decay)


def hardware_description(device: torch.device, world_size: int) -> str:
    if device.type == "cuda":
        what = torch.cuda.get_device_name(device)
    else:
        what = f"{platform.machine()} CPU, {torch.get_num_threads()} threads"
    return f"{world_size} x {what}" if world_size > 1 else what


def command_line(world_size: int) -> str:
    args = " ".join(shlex.quote(a) for a in sys.argv[1:])
    launcher = f"torchrun --nproc_per_node={world_size} training/run.py" if world_size > 1 else "python training/run.py"
    return f"{launcher} {args}".strip()


def find_max_lr(cfg: Config, setup: TrainSetup, train: CifarSplit, out: Path, is_main: bool) -> dict:
    """Run the LR range test on augmented training batches; plot and save it (rank 0)."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)

    def batches():
        while True:
            order = torch.randperm(len(train), generator=gen).to(train.images.device)
            for i in range(0, len(order) - setup.batch_size + 1, setup.batch_size):
                idx = order[i : i + setup.batch_size]
                yield prepare_inputs(setup, setup.augment(train.images[idx], generator=gen)), train.labels[idx]

    result = lr_range_test(
        setup.model, setup.optimizer, batches(), lambda m, x, y: loss_fn(setup, m, x, y)[0],
        start_lr=cfg.lr_finder_start, end_lr=cfg.lr_finder_end, num_steps=cfg.lr_finder_steps,
        progress=(lambda it: tqdm(it, desc="LR range test", leave=False)) if is_main else None,
    ).to_dict()
    if setup.dist.enabled:  # every rank must use rank 0's suggestion
        value = torch.tensor([result["suggested_lr"]], dtype=torch.float64, device=train.images.device)
        dist.broadcast(value, src=0)
        result["suggested_lr"] = value.item()
    if is_main:
        reports.plot_lr_finder(result, out / "lr_finder.png")
        reports.write_json(out / "lr_finder.json", result)
    log(f"LR range test: suggested max LR {result['suggested_lr']:.3e} ({result['rule']})", is_main)
    return result


def main(argv: list[str] | None = None) -> dict:
    cfg = parse_args(argv)
    dist_info = init_distributed(cfg.device)
    is_main = dist_info.is_main
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device, dist_info)
    out = Path(cfg.out or f"runs/{cfg.model}")
    torch.manual_seed(cfg.seed)
    model = create_model(cfg.model, **json.loads(cfg.model_args))
    image_size = int(model.model_args.get("image_size", 32))
    if is_main:
        params = sum(p.numel() for p in model.parameters())
        check_output_folder(out, min_free_bytes=6 * 4 * params + 20 * 2**20)

    t0 = time.perf_counter()
    train = load_cifar10(cfg.data, split="train", download=cfg.download)
    test = load_cifar10(cfg.data, split="test", download=cfg.download)
    data_source = cfg.data or os.environ.get("VITLAB_DATA", "default location")
    train, test = subset(train, cfg.train_subset, cfg.seed), subset(test, cfg.test_subset, cfg.seed)
    if image_size != train.images.shape[-1]:
        raise SystemExit(f"error: {cfg.model} expects {image_size} px inputs; CIFAR-10 is 32 px (set image_size=32 in --model-args)")
    train_shard = shard(train, dist_info.rank, dist_info.world_size).to(device)
    test_shard = shard(test, dist_info.rank, dist_info.world_size).to(device)
    log(f"data: {len(train):,} train / {len(test):,} test images from {data_source} ({time.perf_counter() - t0:.1f} s)", is_main)

    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, model)
    train_model = model
    if dist_info.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        train_model = torch.compile(train_model)
    mean, std = CIFAR10_MEAN, CIFAR10_STD
    setup = TrainSetup(
        model=train_model, optimizer=optimizer, schedule=None,
        augment=BatchAugment(crop_padding=cfg.crop_padding, flip=cfg.flip, cutout_size=cfg.cutout),
        mean=mean, std=std, batch_size=cfg.batch_size, seed=cfg.seed,
        label_smoothing=cfg.label_smoothing, l1_weight=cfg.l1_weight,
        amp_dtype={"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp],
        channels_last=cfg.channels_last, dist=dist_info,
    )
    steps_per_epoch = len(train_shard) // cfg.batch_size
    if steps_per_epoch < 1:
        raise SystemExit(f"error: batch size {cfg.batch_size} is larger than the {len(train_shard)} training images per process")

    state_path = out / TRAINING_STATE_FILE
    meta = {"epoch": 0, "step": 0, "history": [], "lrs": [], "max_lr": None, "lr_finder": None, "train_seconds": 0.0}
    if cfg.resume and state_path.is_file():
        meta = load_training_state(state_path, model, optimizer)
        log(f"resumed from {state_path} after epoch {meta['epoch']}", is_main)
    elif cfg.resume:
        log(f"--resume: no {state_path} yet, starting from scratch", is_main)

    if cfg.find_lr or (cfg.max_lr == "auto" and meta["max_lr"] is None):
        meta["lr_finder"] = find_max_lr(cfg, setup, train_shard, out, is_main)
        if cfg.find_lr:
            return meta["lr_finder"]
    if meta["max_lr"] is None:
        meta["max_lr"] = meta["lr_finder"]["suggested_lr"] if cfg.max_lr == "auto" else float(cfg.max_lr)
    setup.schedule = OneCycle.peak_at_epoch(
        meta["max_lr"], cfg.epochs, steps_per_epoch, cfg.peak_epoch, div_factor=cfg.div_factor,
        final_div_factor=cfg.final_div_factor, anneal="cos" if cfg.anneal == "cos" else "linear",
        three_phase=cfg.three_phase, cycle_momentum=cfg.cycle_momentum,
        max_momentum=cfg.momentum if cfg.optimizer == "sgd" else 0.95,
    )
    config = model_config(model, mean=CIFAR10_MEAN, std=CIFAR10_STD, classes=train.classes, image_size=image_size)
    log(f"{cfg.model}: {sum(p.numel() for p in model.parameters()):,} params | max LR {meta['max_lr']:.3e} | "
        f"{cfg.epochs} epochs x {steps_per_epoch} steps | {hardware_description(device, dist_info.world_size)}", is_main)

    confusion = None
    for epoch in range(meta["epoch"], cfg.epochs):
        bar = (lambda it: tqdm(it, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, dynamic_ncols=True)) if is_main else None
        train_stats, meta["step"], lrs = train_one_epoch(setup, train_shard, epoch, meta["step"], progress=bar)
        test_stats, confusion = evaluate(model, test_shard, mean, std, dist_info=dist_info, channels_last=cfg.channels_last)
        meta["epoch"] = epoch + 1
        meta["lrs"] += lrs
        meta["train_seconds"] += train_stats.seconds + test_stats.seconds
        meta["history"].append({
            "epoch": epoch + 1, "train_loss": train_stats.loss, "train_acc": train_stats.accuracy,
            "test_loss": test_stats.loss, "test_acc": test_stats.accuracy, "lr": lrs[-1],
            "seconds": train_stats.seconds + test_stats.seconds,
        })
        log(f"epoch {epoch + 1:>3}/{cfg.epochs} | lr {lrs[-1]:.2e} | train loss {train_stats.loss:.4f} acc {train_stats.accuracy:5.2f}% "
            f"| test loss {test_stats.loss:.4f} acc {test_stats.accuracy:5.2f}% | {train_stats.seconds + test_stats.seconds:.1f} s", is_main)
        if is_main:
            save_checkpoint(model, out, config)
            reports.write_history(out / "history.csv", meta["history"])
            save_training_state(state_path, model, optimizer, meta)

    if confusion is None:  # resumed a finished run: measure again
        _, confusion = evaluate(model, test_shard, mean, std, dist_info=dist_info, channels_last=cfg.channels_last)
    metrics = finish(cfg, model, config, meta, confusion, out, test, device, dist_info, data_source, steps_per_epoch)
    if dist_info.enabled:
        dist.destroy_process_group()
    return metrics


def ranks_in_sync(model: torch.nn.Module, dist_info) -> dict:
    """All-gather a checksum of the weights: DDP must keep every rank identical."""
    flat = torch.cat([p.detach().double().flatten() for p in model.parameters()])
    checksum = torch.stack([flat.sum(), (flat * torch.arange(len(flat), dtype=torch.float64, device=flat.device)).sum()])
    gathered = [torch.zeros_like(checksum) for _ in range(dist_info.world_size)]
    dist.all_gather(gathered, checksum)
    values = [g.tolist() for g in gathered]
    return {"world_size": dist_info.world_size, "weight_checksums": values, "in_sync": all(v == values[0] for v in values)}


def finish(cfg, model, config, meta, confusion, out, test, device, dist_info, data_source, steps_per_epoch) -> dict:
    """Final metrics, plots, card; the misclassified grid; the Hub push. Rank 0 writes."""
    ddp = ranks_in_sync(model, dist_info) if dist_info.enabled else None
    if not dist_info.is_main:
        return {}
    history = meta["history"]
    classes = list(config["classes"])
    cm = confusion.numpy()
    report = reports.classification_report(cm, classes)
    best = max(history, key=lambda h: h["test_acc"])
    metrics = {
        "test_accuracy": round(float(100.0 * cm.trace() / cm.sum()), 4),
        "best_test_accuracy": round(best["test_acc"], 4),
        "best_epoch": int(best["epoch"]),
        "test_images": int(cm.sum()),
        "per_class_accuracy": {c: round(float(100.0 * cm[i, i] / max(cm[i].sum(), 1)), 2) for i, c in enumerate(classes)},
        "confusion_matrix": cm.tolist(),
        "classification_report": report,
        "max_lr": meta["max_lr"],
        "epochs": meta["epoch"],
    }
    if ddp:
        metrics["distributed"] = ddp
    cost = model_cost(unwrap(model).to("cpu"))
    model.to(device)
    run = {
        "command": command_line(dist_info.world_size), "epochs": meta["epoch"], "seed": cfg.seed,
        "train_seconds": meta["train_seconds"], "hardware": hardware_description(device, dist_info.world_size),
        "data_source": str(data_source), "lr_finder": meta["lr_finder"] is not None,
        "augmentation": f"random crop (pad {cfg.crop_padding}), flip {'on' if cfg.flip else 'off'}, cutout {cfg.cutout or 'off'}",
    }
    metrics["run"] = run
    metrics["cost"] = {"params": cost.params, "macs": cost.macs, "flops": cost.flops}
    reports.write_json(out / "metrics.json", metrics)
    (out / "classification_report.txt").write_text(reports.format_classification_report(report))
    reports.plot_curves(history, out / "curves.png")
    reports.plot_lr_history(meta["lrs"], steps_per_epoch, out / "lr_history.png")
    reports.plot_confusion_matrix(cm, classes, out / "confusion_matrix.png")
    if meta["lr_finder"] is not None and not (out / "lr_finder.png").exists():
        reports.plot_lr_finder(meta["lr_finder"], out / "lr_finder.png")
    (out / "README.md").write_text(reports.model_card(config=config, metrics=metrics, run=run, cost=metrics["cost"]))
    (out / TRAINING_STATE_FILE).unlink(missing_ok=True)
    log(f"done: test accuracy {metrics['test_accuracy']:.2f}% (best {metrics['best_test_accuracy']:.2f}% at epoch "
        f"{metrics['best_epoch']}) in {meta['train_seconds'] / 60:.1f} min -> {out}")

    grid_dir = Path(cfg.misclassified_dir or f"runs/{cfg.model}-misclassified")
    try:
        from training.misclassified import save_misclassified_grid

        grid = save_misclassified_grid(unwrap(model), config, test, grid_dir / "misclassified_gradcam.png", device=device)
        log(f"misclassified grid: {grid} (CIFAR-10 pixels: keep it out of git)")
    except Exception as e:  # a finished run must never be lost to a plotting problem
        log(f"warning: misclassified grid not written: {type(e).__name__}: {e}")
        grid = None
    if cfg.push_to_hub:
        url = push_to_hub(out, cfg.push_to_hub, private=cfg.private)
        if grid is not None:
            from huggingface_hub import HfApi

            HfApi().upload_file(path_or_fileobj=str(grid), path_in_repo=grid.name, repo_id=cfg.push_to_hub)
        log(f"pushed to the Hub: {url}")
    return metrics


if __name__ == "__main__":
    main()
