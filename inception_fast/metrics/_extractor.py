"""FeatureExtractor: images -> the FID network's features at the taps asked for, in float32."""
from __future__ import annotations

import contextlib

import torch

from inception_fast.metrics._preprocess import preprocess
from inception_fast.models.inception_v3_fid import InceptionV3FID, inception_v3_fid


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
    (metrics.preprocess's input for `mode`) -> {tap: (N, width) float32 on the CPU}; in eval mode, on
    the fused path, without gradients, TF32 off on GPUs.

    weights: as inception_v3_fid's (True, the default: the published file; a path, URL or state_dict;
    None: untrained); or model: an InceptionV3FID to use as it is. taps: widths of FID_TAPS, 'logits',
    'logits_unbiased'."""

    def __init__(self, weights=True, taps=(2048,), mode: str = "pytorch-fid", device: str | torch.device = "cpu",
                 model: InceptionV3FID | None = None):
        self.device = torch.device(device)
        self.model = (model if model is not None else inception_v3_fid(weights)).eval().to(self.device)
        self.taps = tuple(taps)
        self.mode = mode
        preprocess(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), mode)  # an unknown mode fails here, not mid-run

    def __call__(self, images: torch.Tensor) -> dict:
        """The features of a batch of images (preprocessed here, as `mode` does it)."""
        return self.features(preprocess(images.to(self.device, non_blocking=True), self.mode))

    @torch.inference_mode()
    def features(self, x: torch.Tensor) -> dict:
        """The features of a preprocessed batch (the network's input, as metrics.preprocess gives it)."""
        with _no_tf32():
            feats = self.model.fid_features(x.to(self.device, non_blocking=True), self.taps)
        return {t: f.to("cpu", torch.float32) for t, f in feats.items()}
