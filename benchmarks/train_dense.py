"""Train the dense model every pruning benchmark starts from: ResNet-20 on the full CIFAR-10 training set.

45,000 training images, the last 5,000 per-class tail held out (the split `hwdsa.data.load_dataset` makes
and DSA's ratio steps use), SGD with Nesterov momentum and a warm-up + cosine schedule. The held-out
accuracy is logged each epoch; the test set is read once, at the end, and never used to choose anything.

The run checkpoints after every epoch (weights, optimiser, schedule, RNG) into `<out>/<name>.ckpt`, so a
run killed with its session continues where it stopped (`--resume` is implied when the checkpoint's
configuration matches). The finished model is `<out>/<name>.pt` (a plain state dict, ~1 MB), with
`<out>/<name>.json` (configuration, accuracies, wall time, host) and `<out>/<name>.log` (one line an epoch).

    taskset -c 1 python benchmarks/train_dense.py --data-root PATH/TO/cifar10 --out benchmarks/dense
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from hwdsa._io import atomic_path, write_json_atomic, write_text_atomic
from hwdsa.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from hwdsa.data import load_dataset, make_loader
from hwdsa.models import create_model
from hwdsa.training import TrainConfig, evaluate, make_optimizer, make_scheduler, set_epoch, train_epoch

from _command import reproduce_command

_log = logging.getLogger("train_dense")


def host_line() -> str:
    """The CPU this ran on, for the log (training results do not depend on it; timings do)."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} thread(s)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet20")
    p.add_argument("--data-root", required=True, help="CIFAR-10: the npz folder or the python pickles")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", default="benchmarks/dense")
    p.add_argument("--name", default=None, help="file stem; default <model>_cifar10")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = args.name or f"{args.model}_cifar10"
    ckpt_path, log_path = out / f"{name}.ckpt", out / f"{name}.log"

    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs)
    run_config: dict[str, Any] = {
        "model": args.model,
        "dataset": "cifar10",
        "split": "45000 train / 5000 held-out (per-class tail) / 10000 test",
        "train": asdict(cfg),
        "batch_size": args.batch_size,
        "seed": args.seed,
        "channels_last": args.channels_last,
    }
    torch.manual_seed(args.seed)
    splits = load_dataset("cifar10", args.data_root, holdout_fraction=0.1, seed=args.seed)
    device = torch.device("cpu")
    model = create_model(args.model, num_classes=splits.num_classes)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    train_loader = make_loader(splits.train, args.batch_size, train=True, seed=args.seed)
    holdout_loader = make_loader(splits.holdout, 500, train=False)
    optimizer = make_optimizer(model, cfg)
    scheduler = make_scheduler(optimizer, cfg, len(train_loader))

    start_epoch, wall_s, lines = 0, 0.0, []
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, expect={"config": json.dumps(run_config, sort_keys=True)})
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        start_epoch, wall_s, lines = int(state["epoch"]), float(state["wall_s"]), list(state["log"])
        _log.info("resuming %s after epoch %d (%.1f min so far)", ckpt_path, start_epoch, wall_s / 60)
    _log.info("host: %s", host_line())

    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        set_epoch(train_loader, epoch)
        loss = train_epoch(
            model,
            ((x.contiguous(memory_format=memory_format), y) for x, y in train_loader),
            optimizer,
            scheduler,
            device,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
        )
        heldout = evaluate(model, holdout_loader, device)
        seconds = time.perf_counter() - t0
        wall_s += seconds
        line = f"epoch {epoch + 1:3d}/{cfg.epochs}  loss {loss:.4f}  held-out top-1 {100 * heldout:.2f}%  {seconds:.0f} s"
        lines.append(line)
        _log.info("%s", line)
        save_checkpoint(
            ckpt_path,
            {
                "config": json.dumps(run_config, sort_keys=True),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "epoch": epoch + 1,
                "wall_s": wall_s,
                "log": lines,
            },
        )
        write_text_atomic(log_path, "\n".join([f"# {host_line()}", *lines]) + "\n")

    model = model.to(memory_format=torch.contiguous_format)
    test = evaluate(model, make_loader(splits.test, 500, train=False), device)
    heldout = evaluate(model, holdout_loader, device)
    state_dict = {k: v.contiguous() for k, v in model.state_dict().items()}
    weights = out / f"{name}.pt"
    with atomic_path(weights) as tmp:
        torch.save(state_dict, tmp)
    summary = {
        **run_config,
        "heldout_top1": heldout,
        "test_top1": test,
        "train_wall_min": round(wall_s / 60, 1),
        "host": host_line(),
        "weights": weights.name,
        "command": "taskset -c 1 " + reproduce_command(__file__, argv),
    }
    write_json_atomic(out / f"{name}.json", summary)
    _log.info("done: held-out %.2f%%, test %.2f%%, %.1f min", 100 * heldout, 100 * test, wall_s / 60)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
