"""Training runs: `inception-fast train` (also `python -m inception_fast.train`) and `inception-fast eval`.

    inception-fast train --model inception_v3 --data DIR --img-size 75 --epochs 20 --recipe finetune \\
        --pretrained weights.pth --out runs/v3
    torchrun --nproc_per_node 2 -m inception_fast.train --model googlenet --data DIR ...
    inception-fast eval --checkpoint runs/v3/best.pt --data DIR/val

What a run does:
- data: an ImageFolder layout (DIR/train + DIR/val, or one folder split by --val-split), the papers'
  augmentation (inception_fast.data), DataLoader workers, pinned memory; without --data, the built-in
  demo data set (drawn shapes, generated on the fly: a demo, not a benchmark);
- model: any of the six on the fused path, the classifier sized to the data's classes; --pretrained
  loads a peer's or our checkpoint (the classifier reset when its size differs); channels_last, AMP
  (bf16 / fp16), optionally torch.compile;
- recipes (`RECIPES`): the papers' optimiser, learning-rate schedule, label smoothing, gradient
  clipping and auxiliary-loss weights, or `finetune` for a pretrained network on a small data set;
- records in --out: history.csv / history.json per epoch (loss, top-1/top-5, images/s, lr), curves.png,
  last.pt and best.pt, each written atomically (a run stopped at any point keeps what it saved);
  --resume continues to the same result as the uninterrupted run;
- scale-out: under torchrun, DistributedDataParallel with a DistributedSampler, BatchNorm statistics
  over the global batch (nn.SyncBatchNorm, which the fused bn_relu honours by all-reducing its sums),
  logging and checkpoints on rank 0; gloo on the CPU, nccl on GPUs. --batch-size is the global batch.

The recipes and the loss are in _train_recipes.py, checkpoints and the history in _train_records.py;
their names are importable from here. The run, evaluation and the options are in this file.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from inception_fast import models
from inception_fast._train_recipes import (  # noqa: F401  (the recipes and loss, importable from here)
    FINETUNE,
    RECIPES,
    Recipe,
    loss_fn,
    lr_factor,
    make_optimizer,
    recipe_for,
    split_outputs,
    topk_correct,
)
from inception_fast._train_records import (  # noqa: F401  (checkpoints and history, importable from here)
    _epoch_line,
    _unwrap,
    load_checkpoint,
    plot_history,
    save_atomic,
    write_history,
)
from inception_fast.data import (
    ImageFolderData,
    SampleSet,
    collate,
    eval_transform,
    make_demo_data,
    train_transform,
)
from inception_fast.layers import sync_batchnorm

DEMO_SIZE = 96  # the built-in demo data set's image side


# ---- distributed ---------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def _all_sum(values: list[float], d: Dist, device) -> list[float]:
    if d.world == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


# ---- the run -------------------------------------------------------------------------------------
def _autocast(device: torch.device, amp: str):
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def build_model(args, num_classes: int, recipe: Recipe) -> nn.Module:
    kwargs = {"num_classes": num_classes}
    drop = args.drop_rate if args.drop_rate is not None else recipe.drop_rate
    if drop is not None:
        kwargs["drop_rate"] = drop
    if args.model in ("googlenet", "inception_v3"):
        # Auxiliary heads only when the recipe weighs them; v3's needs the 17x17 grid of a 299 input.
        kwargs["aux_logits"] = recipe.aux_weight > 0 and (args.model != "inception_v3" or args.img_size >= 299)
    model = models.create_model(args.model, **kwargs)
    if args.pretrained:
        models.load_pretrained(model, args.pretrained)
    return model


def _loader(samples, transform, args, d: Dist, train: bool, seed: int):
    from torch.utils.data import DataLoader, DistributedSampler

    data = SampleSet(samples, transform, seed)
    per_process = max(1, args.batch_size // d.world)
    sampler = DistributedSampler(data, num_replicas=d.world, rank=d.rank, shuffle=train, seed=seed,
                                 drop_last=train)
    loader = DataLoader(data, batch_size=per_process, sampler=sampler, num_workers=args.workers,
                        pin_memory=torch.cuda.is_available(), collate_fn=collate, drop_last=train,
                        persistent_workers=False)
    return data, sampler, loader


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def evaluate(model, loader, device, amp: str, channels_last: bool, d: Dist) -> dict:
    model.eval()
    loss_sum = n = c1 = c5 = skipped = 0.0
    with torch.no_grad(), _autocast(device, amp):
        for x, y, bad in loader:
            skipped += bad
            if x is None:
                continue
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = model(x)
            loss_sum += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            a, b = topk_correct(logits, y)
            c1, c5, n = c1 + a, c5 + b, n + len(y)
    loss_sum, n, c1, c5, skipped = _all_sum([loss_sum, n, c1, c5, skipped], d, device)
    return {"loss": loss_sum / max(n, 1), "top1": c1 / max(n, 1), "top5": c5 / max(n, 1), "images": int(n),
            "skipped": int(skipped)}


def train(args) -> dict:
    """One training run (see the module docstring). Returns the last epoch's record."""
    device = _device(args.device)
    d = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
        torch.cuda.set_device(device)
    out = Path(args.out)
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
    data_root = args.data
    if data_root is None:
        data_root = out / "demo-data"
        if d.main:
            make_demo_data(data_root, size=DEMO_SIZE, seed=args.seed)
            print(f"no --data: training on the built-in demo data set (drawn shapes, 3 classes, generated in "
                  f"{data_root}) -- a demo that the run works, not a benchmark")
        if d.world > 1:
            dist.barrier()
    data = ImageFolderData(data_root, val_split=args.val_split, seed=args.seed)
    recipe = recipe_for(args.recipe, args.model)
    if args.lr is not None:
        recipe = dataclasses.replace(recipe, lr=args.lr)
    torch.manual_seed(args.seed)
    model = build_model(args, len(data.classes), recipe)
    cfg = _unwrap(model).pretrained_cfg
    if args.img_size < getattr(model, "min_input_size", 1):
        raise ValueError(f"{args.model} needs --img-size of at least {model.min_input_size}, got {args.img_size}")
    # The fused path, its k x k weights channels_last (before DDP, which fixes the layouts it sees).
    model.set_fused(True)
    if d.world > 1:
        # BatchNorm statistics over the global batch (same module names, same state_dict either way):
        # nn.SyncBatchNorm on GPUs; on the CPU (DDP takes SyncBatchNorm only on GPUs) the fused
        # bn_relu's own all-reduce of its sums.
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            sync_batchnorm(model)
    model = model.to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(recipe, model.parameters())
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    start_epoch, best, history = 0, -1.0, []
    if args.resume:
        path = out / "last.pt" if args.resume == "auto" else Path(args.resume)
        ckpt = load_checkpoint(path, args.model)
        if ckpt["classes"] != data.classes:
            raise ValueError(f"{path} was trained on the classes {ckpt['classes']}, the data has {data.classes}")
        _unwrap(model).load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scaler.load_state_dict(ckpt["scaler"])
        start_epoch, best, history = ckpt["epoch"] + 1, ckpt["best"], ckpt["history"]
        if d.main:
            print(f"resumed from {path} after epoch {ckpt['epoch'] + 1}")
    net = model
    if d.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if args.compile:
        net = torch.compile(net)

    train_set, train_sampler, train_loader = _loader(
        data.train, train_transform(args.img_size, cfg, recipe.min_area, recipe.photometric), args, d, True, args.seed)
    val_loader = None
    if data.val:
        _, _, val_loader = _loader(data.val, eval_transform(args.img_size, cfg), args, d, False, args.seed)
    steps_per_epoch = max(1, len(train_loader))
    base_lrs = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
    for g, lr in zip(optimizer.param_groups, base_lrs):
        g["initial_lr"] = lr

    record = history[-1] if history else {}
    for epoch in range(start_epoch, args.epochs):
        net.train()
        train_sampler.set_epoch(epoch)
        train_set.set_epoch(epoch)
        torch.manual_seed(args.seed * 1_000_003 + epoch)  # dropout: the same masks after a resume
        loss_sum = n = c1 = skipped = 0.0
        t0 = time.perf_counter()
        progress = _progress(train_loader, epoch, args, d)
        for step, (x, y, bad) in enumerate(progress):
            skipped += bad
            if x is None:
                continue
            factor = lr_factor(recipe, epoch + step / steps_per_epoch, args.epochs)
            for g, lr in zip(optimizer.param_groups, base_lrs):
                g["lr"] = lr * factor
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if args.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with _autocast(device, args.amp):
                outputs = net(x)
                loss = loss_fn(outputs, y, recipe.label_smoothing, recipe.aux_weight)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the training loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}: "
                                         "lower --lr (or use --amp off)")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if recipe.clip_grad:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), recipe.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            logits = split_outputs(outputs)[0]
            loss_sum += float(loss.detach()) * len(y)
            c1 += topk_correct(logits.detach(), y, (1,))[0]
            n += len(y)
            if d.main and hasattr(progress, "set_postfix"):
                elapsed = time.perf_counter() - t0
                progress.set_postfix(loss=f"{loss_sum / n:.4f}", acc=f"{c1 / n:.3f}",
                                     img_s=f"{n * d.world / max(elapsed, 1e-9):.1f}")
        elapsed = time.perf_counter() - t0
        loss_sum, n, c1, skipped = _all_sum([loss_sum, n, c1, skipped], d, device)
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"], "train_loss": loss_sum / max(n, 1),
                  "train_top1": c1 / max(n, 1), "train_images_per_s": n / max(elapsed, 1e-9),
                  "skipped_images": int(skipped), "val_loss": None, "val_top1": None, "val_top5": None}
        if val_loader is not None:
            v = evaluate(net, val_loader, device, args.amp, args.channels_last, d)
            record.update(val_loss=v["loss"], val_top1=v["top1"], val_top5=v["top5"])
            record["skipped_images"] += v["skipped"]
        history.append(record)
        score = record["val_top1"] if record["val_top1"] is not None else -record["train_loss"]
        if d.main:
            ckpt = {"model": _unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(), "epoch": epoch, "best": max(best, score), "history": history,
                    "model_name": args.model, "classes": data.classes, "img_size": args.img_size,
                    "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
            save_atomic(ckpt, out / "last.pt")
            if score > best:
                save_atomic(ckpt, out / "best.pt")
            write_history(out, history)
            print(_epoch_line(record), flush=True)
            if record["skipped_images"]:
                print(f"  skipped {record['skipped_images']} unreadable image(s) this epoch", flush=True)
        best = max(best, score)
    if d.world > 1:
        dist.barrier()
    return record


def _progress(loader, epoch, args, d: Dist):
    if args.no_progress or not d.main:
        return loader
    from tqdm import tqdm

    return tqdm(loader, desc=f"epoch {epoch + 1}/{args.epochs}", leave=False, dynamic_ncols=True)


def eval_main(args) -> dict:
    """`inception-fast eval`: a training checkpoint on an image folder (its classes in the same order)."""
    device = _device(args.device)
    ckpt = load_checkpoint(args.checkpoint, args.model)
    from inception_fast.data import _scan

    classes, samples = _scan(Path(args.data))
    if classes != ckpt["classes"]:
        raise ValueError(f"{args.data} has the classes {classes}, the checkpoint was trained on {ckpt['classes']}")
    saved = ckpt.get("args", {})
    model = models.create_model(ckpt["model_name"], num_classes=len(classes),
                                **({"aux_logits": False} if ckpt["model_name"] in ("googlenet", "inception_v3") else {}))
    state = {k: v for k, v in ckpt["model"].items() if not k.startswith(("aux1.", "aux2.", "AuxLogits."))}
    model.load_state_dict(state)
    model = model.to(device)
    size = args.img_size or ckpt.get("img_size") or saved.get("img_size")
    loader_args = argparse.Namespace(batch_size=args.batch_size, workers=args.workers)
    _, _, loader = _loader(samples, eval_transform(size, model.pretrained_cfg), loader_args, Dist(), False, 0)
    result = evaluate(model, loader, device, args.amp, False, Dist())
    print(f"{ckpt['model_name']} on {args.data} ({result['images']} images, {size}px): loss {result['loss']:.4f}  "
          f"top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}"
          + (f"  (skipped {result['skipped']} unreadable)" if result["skipped"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


# ---- command line --------------------------------------------------------------------------------
# The options of `inception-fast train` and `inception-fast eval`; inception_fast.cli builds the parsers.
def add_train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="googlenet", choices=models.list_models(), metavar="NAME",
                   help=f"one of {', '.join(models.list_models())} (default googlenet)")
    p.add_argument("--data", default=None, help="image folder: DIR/train + DIR/val, or DIR/<class>/* split by "
                                                "--val-split (default: the built-in demo data set)")
    p.add_argument("--val-split", type=float, default=0.1,
                   help="share of DIR/<class>/* held out for validation when there is no DIR/val (default 0.1)")
    p.add_argument("--img-size", type=int, default=None,
                   help="training side (default: the model's native; 96 for the demo data)")
    p.add_argument("--batch-size", type=int, default=32, help="global batch, split across torchrun processes (default 32)")
    p.add_argument("--epochs", type=int, default=2, help="default 2")
    p.add_argument("--lr", type=float, default=None, help="override the recipe's learning rate")
    p.add_argument("--recipe", default="finetune", choices=sorted(RECIPES) + ["finetune"],
                   help="the papers' optimiser and schedule, or finetune (AdamW, warm-up, cosine; the default)")
    p.add_argument("--pretrained", default=None, help="a peer's or our checkpoint (file or URL); the "
                                                      "classifier is reset when its size differs")
    p.add_argument("--drop-rate", type=float, default=None, help="the classifier's dropout (default: the recipe's)")
    p.add_argument("--amp", default=None, choices=["bf16", "fp16", "off"], help="default: bf16 on a GPU, off on the CPU")
    p.add_argument("--channels-last", action="store_true", help="channels_last model and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--out", default="runs/train", help="folder for the checkpoints and history (default runs/train)")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="continue from --out/last.pt (or the checkpoint given)")
    p.add_argument("--seed", type=int, default=0, help="default 0")
    p.add_argument("--no-progress", action="store_true", help="no per-step progress bar")


def add_eval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a training run's best.pt or last.pt")
    p.add_argument("--data", required=True, help="image folder DIR/<class>/*")
    p.add_argument("--model", default=None, help="check that the checkpoint is of this model")
    p.add_argument("--img-size", type=int, default=None, help="default: the side the checkpoint was trained at")
    p.add_argument("--batch-size", type=int, default=32, help="default 32")
    p.add_argument("--workers", type=int, default=2, help="DataLoader worker processes (default 2)")
    p.add_argument("--amp", default="off", choices=["bf16", "fp16", "off"], help="default off")
    p.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:N")
    p.add_argument("--json", default=None, help="also write the result to this JSON file")


def finish_train_args(args) -> argparse.Namespace:
    if args.img_size is None:
        # The demo data's own side (its images are 96 px) when there is no --data, else the model's native.
        args.img_size = DEMO_SIZE if args.data is None else _native_size(args.model)
    if args.amp is None:
        args.amp = "bf16" if _device(args.device).type == "cuda" else "off"
    if args.batch_size < 1:
        raise ValueError("--batch-size must be at least 1")
    return args


def _native_size(name: str) -> int:
    with torch.device("meta"):
        return int(models.create_model(name).pretrained_cfg["input_size"][-1])


def train_command(args: argparse.Namespace) -> int:
    """`inception-fast train` on its parsed options."""
    train(finish_train_args(args))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


def eval_command(args: argparse.Namespace) -> int:
    """`inception-fast eval` on its parsed options."""
    eval_main(args)
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m inception_fast.train [train|eval] OPTIONS` (and torchrun's `-m inception_fast.train`):
    `inception-fast train` when the first word is not `train` or `eval`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] not in ("train", "eval"):
        argv = ["train", *argv]
    from inception_fast import cli

    return cli.run(argv)


if __name__ == "__main__":
    sys.exit(main())
