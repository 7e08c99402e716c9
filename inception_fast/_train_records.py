"""What a training run leaves in its folder: checkpoints (last.pt, best.pt, written atomically) and
the history (history.json, history.csv, curves.png) with its one line per epoch. Part of
inception_fast.train, which re-exports every name here."""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import torch
import torch.nn as nn


# ---- checkpoints ---------------------------------------------------------------------------------
def save_atomic(obj, path: Path) -> None:
    """torch.save to a temporary file beside `path`, then rename: `path` is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _unwrap(model: nn.Module) -> nn.Module:
    model = getattr(model, "_orig_mod", model)
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def load_checkpoint(path: str | os.PathLike, model_name: str | None = None) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # tensors and plain containers only
    if not isinstance(ckpt, dict) or "model" not in ckpt or "model_name" not in ckpt:
        raise ValueError(f"{path} is not an inception-fast training checkpoint (no 'model'/'model_name'); for a "
                         "peer's weights use --pretrained")
    if model_name is not None and ckpt["model_name"] != model_name:
        raise ValueError(f"{path} is a checkpoint of {ckpt['model_name']!r}, not of {model_name!r}")
    return ckpt


# ---- history -------------------------------------------------------------------------------------
def write_history(out: Path, history: list[dict]) -> None:
    (out / "history.json").write_text(json.dumps(history, indent=1))
    keys = list(history[0]) if history else []
    with open(out / "history.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(history)
    try:
        plot_history(history, out / "curves.png")
    except ImportError:
        pass


def plot_history(history: list[dict], path: Path) -> None:
    """Accuracy and loss curves, training and validation, as the seeds plot them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    a1.plot(ep, [h["train_top1"] for h in history], "bo", label="training accuracy")
    a2.plot(ep, [h["train_loss"] for h in history], "bo", label="training loss")
    if any(h.get("val_top1") is not None for h in history):
        a1.plot(ep, [h["val_top1"] for h in history], "b", label="validation accuracy")
        a2.plot(ep, [h["val_loss"] for h in history], "b", label="validation loss")
    a1.set_title("Training and validation accuracy")
    a2.set_title("Training and validation loss")
    for a in (a1, a2):
        a.set_xlabel("epoch")
        a.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _epoch_line(r: dict) -> str:
    s = (f"epoch {r['epoch']}: lr {r['lr']:.3g}  train loss {r['train_loss']:.4f} acc {r['train_top1']:.3f}  "
         f"{r['train_images_per_s']:.1f} img/s")
    if r["val_top1"] is not None:
        s += f"  val loss {r['val_loss']:.4f} top-1 {r['val_top1']:.3f} top-5 {r['val_top5']:.3f}"
    return s
