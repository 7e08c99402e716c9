"""Training recipes and the loss: the papers' optimisers, learning-rate schedules, label smoothing,
gradient clipping and auxiliary-loss weights (`RECIPES`, `FINETUNE`), and the loss and accuracy a
training step computes. Part of inception_fast.train, which re-exports every name here."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


# ---- recipes -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """One training recipe. lr is used as given (the papers' values were per replica of batch 32)."""

    optimizer: str                  # "sgd" | "rmsprop" | "adamw"
    lr: float
    weight_decay: float
    schedule: str = "step"          # "step": lr * decay_rate ** floor(epoch / decay_every); "cosine"
    decay_every: float = 2.0        # epochs
    decay_rate: float = 0.94
    warmup_epochs: float = 0.0
    momentum: float = 0.9
    rmsprop_alpha: float = 0.9      # RMSProp's decay
    rmsprop_eps: float = 1.0
    label_smoothing: float = 0.0
    clip_grad: float | None = None  # max global gradient norm
    aux_weight: float = 0.0         # weight of each auxiliary classifier's loss (0: no aux heads)
    drop_rate: float | None = None  # the classifier's dropout (None: the model's default)
    min_area: float = 0.08          # smallest random-resized-crop area
    photometric: float = 0.4        # colour-jitter strength (0: none)


# The papers' recipes (../shared/seeds): GoogLeNet (Szegedy 2014): SGD momentum 0.9, the learning rate
# down 4% every 8 epochs, auxiliary losses weighted 0.3, dropout 0.4. BN-Inception (Ioffe 2015): a
# 5x higher learning rate than the Inception baseline's 0.0015, decay 6x faster, no dropout, weight
# decay / 5, milder photometric distortion. Inception-v3/v4/ResNet (Szegedy 2015, 2016): RMSProp
# (decay 0.9, eps 1.0), lr 0.045 x 0.94 every 2 epochs, gradient clipping at 2.0, label smoothing 0.1,
# v3's auxiliary head weighted 0.4 (torchvision's reference recipe).
_V3_FAMILY = Recipe("rmsprop", 0.045, 4e-5, decay_every=2.0, decay_rate=0.94, label_smoothing=0.1, clip_grad=2.0)
RECIPES: dict[str, dict[str, Recipe]] = {
    "paper": {
        "googlenet": Recipe("sgd", 0.01, 2e-4, decay_every=8.0, decay_rate=0.96, aux_weight=0.3, drop_rate=0.4),
        "bn_inception": Recipe("sgd", 0.0075, 4e-5, decay_every=8.0 / 6, decay_rate=0.96, drop_rate=0.0,
                               photometric=0.1),
        "inception_v3": dataclasses.replace(_V3_FAMILY, aux_weight=0.4),
        "inception_v4": _V3_FAMILY,
        "inception_resnet_v1": _V3_FAMILY,
        "inception_resnet_v2": _V3_FAMILY,
    },
}
# Fine-tuning a pretrained network on a small folder (the seeds' runs: Adam, lr 1e-3): AdamW, a
# one-epoch warm-up, then cosine; lighter augmentation; no auxiliary heads.
FINETUNE = Recipe("adamw", 1e-3, 1e-4, schedule="cosine", warmup_epochs=1.0, min_area=0.35, photometric=0.1)



def recipe_for(name: str, model: str) -> Recipe:
    if name == "finetune":
        return FINETUNE
    if name not in RECIPES or model not in RECIPES[name]:
        raise ValueError(f"unknown recipe {name!r} for {model!r}; choose from {sorted(RECIPES) + ['finetune']}")
    return RECIPES[name][model]


def lr_factor(recipe: Recipe, epoch_float: float, epochs: int) -> float:
    """The learning-rate multiplier at a (fractional) epoch: linear warm-up, then the schedule."""
    if recipe.warmup_epochs > 0 and epoch_float < recipe.warmup_epochs:
        return (epoch_float + 1e-3) / recipe.warmup_epochs
    if recipe.schedule == "cosine":
        span = max(epochs - recipe.warmup_epochs, 1e-9)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (epoch_float - recipe.warmup_epochs) / span)))
    return recipe.decay_rate ** math.floor(epoch_float / recipe.decay_every)


def make_optimizer(recipe: Recipe, params) -> torch.optim.Optimizer:
    # No weight decay on BatchNorm parameters and biases (one-dimensional), as the papers' TF code.
    params = [p for p in params if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() > 1], "weight_decay": recipe.weight_decay},
              {"params": [p for p in params if p.dim() <= 1], "weight_decay": 0.0}]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum)
    if recipe.optimizer == "rmsprop":
        return torch.optim.RMSprop(groups, lr=recipe.lr, alpha=recipe.rmsprop_alpha, eps=recipe.rmsprop_eps,
                                   momentum=recipe.momentum)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


# ---- loss ----------------------------------------------------------------------------------------
def split_outputs(out) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(logits, [aux logits]) from what a model returns in training mode (a tensor, or torchvision's
    GoogLeNetOutputs / InceptionOutputs with the main logits first)."""
    if isinstance(out, torch.Tensor):
        return out, []
    main, *aux = out
    return main, [a for a in aux if a is not None]


def loss_fn(out, target: torch.Tensor, label_smoothing: float = 0.0, aux_weight: float = 0.0) -> torch.Tensor:
    """Cross-entropy of the main logits (label-smoothed) plus aux_weight x that of each auxiliary head."""
    main, aux = split_outputs(out)
    loss = F.cross_entropy(main.float(), target, label_smoothing=label_smoothing)
    for a in aux:
        loss = loss + aux_weight * F.cross_entropy(a.float(), target, label_smoothing=label_smoothing)
    return loss


def topk_correct(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    k = min(max(ks), logits.shape[1])
    top = logits.topk(k, dim=1).indices
    hit = top == target.view(-1, 1)
    return [int(hit[:, :min(kk, k)].any(1).sum()) for kk in ks]
