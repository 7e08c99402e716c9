"""The Inception-v3 of the generative-model metrics (FID, KID, Inception Score): TensorFlow's 2015
Inception graph (`inception-2015-12-05`), as pytorch-fid ports it (`fid_inception_v3()`, the weights
`pt_inception-2015-12-05-6726825d.pth`) and torch-fidelity, clean-fid and torchmetrics use it.

It is torchvision's Inception3 layout with 1008 classes, no auxiliary head and no transform_input,
and two differences in the pool branch of the A, C and E blocks: the average pool of Mixed_5b-d,
6b-e and 7b leaves the padding out of its count (count_include_pad=False), and Mixed_7c max-pools
(3x3, stride 1, padding 1). The state_dict keys are pytorch-fid's, so its weights file loads strictly.

The metric taps (pytorch-fid's `--dims`), each global-average-pooled: 64 after the first max pool, 192
after the second, 768 after Mixed_6e (what the auxiliary head would read), 2048 after Mixed_7c (the
pool3 features of FID).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from inception_fast.models._weights import load_weights
from inception_fast.models.inception_v3 import INCEPTION_MEAN, INCEPTION_STD, Inception3

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
# The first 8 hex digits of the file's SHA-256 (torch.hub's check_hash reads them from the name).
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
# feature width -> the layer whose output is global-average-pooled into it
FID_TAPS = {64: "maxpool1", 192: "maxpool2", 768: "Mixed_6e", 2048: "Mixed_7c"}
LOGITS = ("logits", "logits_unbiased")


class InceptionV3FID(Inception3):
    """The FID network (see the module's docstring): Inception3 with the FID pools, 1008 classes, no
    auxiliary head, no transform_input; input in [-1, 1] (the metrics' preprocessing makes it)."""

    pool_branches = {**{n: "avg_exclude_pad" for n in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6b", "Mixed_6c",
                                                     "Mixed_6d", "Mixed_6e", "Mixed_7b")}, "Mixed_7c": "max"}
    default_cfg_template = {
        **Inception3.default_cfg_template,
        "architecture": "inception_v3_fid", "tag": "pt_inception_2015_12_05", "license": "apache-2.0",
        "url": FID_WEIGHTS_URL, "peer": "pytorch_fid.inception.fid_inception_v3()",
        "crop_pct": 1.0, "interpolation": "bilinear", "mean": INCEPTION_MEAN, "std": INCEPTION_STD,
        "num_classes": 1008,
    }
    pretrained_tags: dict[str, dict[str, Any]] = {}

    def __init__(self, num_classes: int = 1008, in_chans: int = 3, init_weights: bool = True,
                 dropout: float = 0.5, drop_rate: float | None = None, global_pool: str = "avg"):
        super().__init__(num_classes=num_classes, aux_logits=False, transform_input=False, init_weights=init_weights,
                         dropout=dropout, in_chans=in_chans, drop_rate=drop_rate, global_pool=global_pool)

    def fid_features(self, x: torch.Tensor, taps=(2048,)) -> dict:
        """{tap: (N, width) float32} for each of `taps`: a width of FID_TAPS (that layer's map,
        global-average-pooled), 'logits' (the classifier on the 2048 features) or 'logits_unbiased'
        (without its bias, torch-fidelity's Inception Score input). The layers after the last tap asked
        for are not run. x: the network's input in [-1, 1] (metrics.preprocess)."""
        taps = tuple(taps)
        bad = [t for t in taps if t not in FID_TAPS and t not in LOGITS]
        if bad or not taps:
            raise ValueError(f"taps must be among {sorted(FID_TAPS)} and {LOGITS}, got {list(taps)}")
        needs = {FID_TAPS[2048] if t in LOGITS else FID_TAPS[t] for t in taps}
        last = max(self.layer_names.index(n) for n in needs)
        pooled: dict[str, torch.Tensor] = {}
        x = self._prepare_input(x)
        for name in self.layer_names[: last + 1]:
            x = self._run_layer(name, x)
            if name in needs:
                pooled[name] = x.mean((2, 3), dtype=torch.float32)
        return {t: self.logits(pooled[FID_TAPS[2048]], t == "logits") if t in LOGITS else pooled[FID_TAPS[t]]
                for t in taps}

    def logits(self, pool3: torch.Tensor, bias: bool = True) -> torch.Tensor:
        """The classifier on the 2048 pool3 features (float32), with or without its bias; row by row,
        so that a row's logits are the same bits whatever the batch size."""
        w = self.fc.weight.float()
        b = self.fc.bias.float() if bias and self.fc.bias is not None else None
        return torch.cat([F.linear(row, w, b) for row in pool3.float().split(1)])


def inception_v3_fid(weights: str | os.PathLike | Mapping[str, Any] | bool | None = None,
                     **kwargs) -> InceptionV3FID:
    """The FID Inception (InceptionV3FID). weights: None, the network untrained (initialised as
    torchvision's); True, the published file (FID_WEIGHTS_URL, checked against its SHA-256 prefix
    FID_WEIGHTS_SHA256_PREFIX; downloaded once into torch.hub's cache, so it needs a network the
    first time); a path, URL or state_dict of pytorch-fid's key names, loaded strictly. Other keyword
    arguments go to InceptionV3FID."""
    if weights is not None and weights is not False:
        kwargs.setdefault("init_weights", False)
    model = InceptionV3FID(**kwargs)
    if weights is True:
        weights = _download_fid_weights()
    if weights is not None and weights is not False:
        load_weights(model, weights)
    return model.eval()


def _download_fid_weights() -> str:
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(FID_WEIGHTS_URL))
    if not os.path.isfile(path):
        try:
            torch.hub.download_url_to_file(FID_WEIGHTS_URL, path, hash_prefix=FID_WEIGHTS_SHA256_PREFIX)
        except Exception as e:  # no network, or a file that is not the published one
            raise RuntimeError(f"could not download the FID Inception weights from {FID_WEIGHTS_URL} ({e}); "
                               f"without a network, pass weights= a local copy of that file "
                               f"(pt_inception-2015-12-05-6726825d.pth)") from e
    return path
