"""FeatureExtractor: images -> the FID network's features at the taps asked for, in float32."""
from __future__ import annotations

import contextlib
import copy

import torch

from inception_fast.metrics._preprocess import preprocess
from inception_fast.models.inception_v3_fid import FID_TAPS, LOGITS, InceptionV3FID, inception_v3_fid


@contextlib.contextmanager
def _no_tf32():
    """TF32 off for convolutions and matmuls (features that do not depend on the GPU's choices)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


class FeatureExtractor:
    """The FID Inception (models.inception_v3_fid) as the metrics run it: a batch of images
    (metrics.preprocess's input for `mode`) -> {tap: (N, width) float32 on the CPU}; in eval mode,
    without gradients, TF32 off on GPUs.

    weights: as inception_v3_fid's (True, the default: the published file; a path, URL or state_dict;
    None: untrained); or model: an InceptionV3FID to use as it is. taps: widths of FID_TAPS, 'logits',
    'logits_unbiased'. dtype: float32, or bfloat16 / float16 (faster where the hardware has them,
    features less exact). optimized: one tap (and the logits, from the 2048 features) through
    inception_fast.optimize() of the network cut after that tap's layer (default, when one tap is
    asked for); several taps, or optimized=False, run the model's fused path."""

    def __init__(self, weights=True, taps=(2048,), mode: str = "pytorch-fid", device: str | torch.device = "cpu",
                 model: InceptionV3FID | None = None, dtype: torch.dtype = torch.float32, optimized: bool | None = None):
        self.device = torch.device(device)
        self.model = (model if model is not None else inception_v3_fid(weights)).eval().to(self.device)
        self.taps = tuple(taps)
        self.mode = mode
        self.dtype = dtype
        preprocess(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), mode)  # an unknown mode fails here, not mid-run
        if not isinstance(self.model, InceptionV3FID):
            raise TypeError(f"model must be an InceptionV3FID (models.inception_v3_fid), got {type(self.model).__name__}")
        widths = {2048 if t in LOGITS else t for t in self.taps}
        if optimized and len(widths) != 1:
            raise ValueError(f"optimized=True computes one tap (with the logits, when it is 2048), not taps "
                             f"{self.taps}")
        self._optimized = None
        if (optimized is None or optimized) and len(widths) == 1:
            from inception_fast import optimize

            self._optimized = optimize(self._truncated(widths.pop()), dtype=dtype)
        elif dtype != torch.float32:
            self.model = copy.deepcopy(self.model).to(dtype)

    def _truncated(self, width: int) -> InceptionV3FID:
        """A copy of the network that ends at the layer of tap `width`, its map global-average-pooled:
        forward gives the (N, width) features."""
        body = copy.deepcopy(self.model)
        names = body.layer_names
        for name in names[names.index(FID_TAPS[width]) + 1:]:
            body._prune_layer(name)
        body.reset_classifier(0)
        return body

    def __call__(self, images: torch.Tensor) -> dict:
        """The features of a batch of images (preprocessed here, as `mode` does it)."""
        return self.features(preprocess(images.to(self.device, non_blocking=True), self.mode))

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> dict:
        """The features of a preprocessed batch (the network's input, as metrics.preprocess gives it)."""
        x = x.to(self.device, non_blocking=True)
        with _no_tf32():
            if self._optimized is not None:
                f = self._optimized(x).float()
                feats = {t: self.model.logits(f, t == "logits") if t in LOGITS else f for t in self.taps}
            else:
                feats = self.model.fid_features(x.to(self.dtype), self.taps)
        return {t: f.to("cpu", torch.float32) for t, f in feats.items()}
