"""Training-loop overhead: images/s of the full loop vs a bare forward+backward on the same batches.

The full loop is ``training.engine.train_one_epoch`` (permutation, batched
augmentation on the device, normalisation, One-Cycle step, optimizer step,
metric accumulation); the bare loop runs only forward, loss, backward and the
optimizer step on pre-made float batches. Target on CPU: overhead <= 10%.

    python benchmarks/bench_training.py --model vit_nano_convstem --images 10240
    python benchmarks/bench_training.py --device cuda --amp bf16 --channels-last --compile   # on a GPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from training.engine import TrainSetup, train_one_epoch  # noqa: E402
from training.schedule import OneCycle  # noqa: E402
from vitlab.data import CIFAR10_MEAN, CIFAR10_STD, BatchAugment, CifarSplit, normalize  # noqa: E402
from vitlab.models import create_model  # noqa: E402


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="vit_nano_convstem")
    p.add_argument("--images", type=int, default=10240)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--amp", choices=["none", "bf16"], default="none")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    data = CifarSplit(torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (args.images,), generator=g), tuple(str(i) for i in range(10))).to(device)
    model = create_model(args.model).to(device)
    if args.channels_last:
        model.to(memory_format=torch.channels_last)
    train_model = torch.compile(model) if args.compile else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    amp = torch.bfloat16 if args.amp == "bf16" else None
    steps = args.images // args.batch_size
    setup = TrainSetup(model=train_model, optimizer=opt, schedule=OneCycle(max_lr=1e-3, total_steps=steps * (args.repeats + 1)),
                       augment=BatchAugment(crop_padding=4, flip=True, cutout_size=8), mean=CIFAR10_MEAN, std=CIFAR10_STD,
                       batch_size=args.batch_size, seed=0, amp_dtype=amp, channels_last=args.channels_last)
    batches = [normalize(data.images[i * args.batch_size:(i + 1) * args.batch_size]) for i in range(steps)]
    if args.channels_last:
        batches = [b.contiguous(memory_format=torch.channels_last) for b in batches]
    labels = [data.labels[i * args.batch_size:(i + 1) * args.batch_size] for i in range(steps)]

    def bare_epoch():
        train_model.train()
        for x, y in zip(batches, labels):
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = F.cross_entropy(train_model(x), y)
            loss.backward()
            opt.step()

    bare_epoch()  # warm-up (and compilation)
    train_one_epoch(setup, data, 0, 0)
    full, bare = [], []
    for r in range(args.repeats):  # interleaved, so background load hits both alike
        sync(device); t = time.perf_counter(); bare_epoch(); sync(device); bare.append(time.perf_counter() - t)
        sync(device); t = time.perf_counter(); train_one_epoch(setup, data, r + 1, 0); sync(device); full.append(time.perf_counter() - t)
    n = steps * args.batch_size
    b, f = min(bare), min(full)
    print(f"model {args.model} | device {device} | threads {torch.get_num_threads()} | amp {args.amp} | "
          f"channels_last {args.channels_last} | compile {args.compile} | {n} images x {args.repeats} repeats (best of)")
    print(f"bare forward+backward: {n / b:8.0f} images/s")
    print(f"full training loop:    {n / f:8.0f} images/s")
    print(f"loop overhead:         {100 * (f - b) / b:8.1f} %  (target <= 10%)")


if __name__ == "__main__":
    main()
