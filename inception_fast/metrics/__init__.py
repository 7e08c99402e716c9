"""Generative-model metrics on the fused path: FID, KID and the Inception Score, with the FID
Inception of pytorch-fid and torch-fidelity (models.inception_v3_fid).

    from inception_fast import metrics
    r = metrics.compute_metrics("real/", "fake/", kid=True)      # {'fid': ..., 'kid_mean': ..., ...}
    mu, sigma = metrics.compute_statistics("real/")               # or an .npz of pytorch-fid's
    metrics.frechet_distance(mu, sigma, mu2, sigma2)
    fake = ((G(z).clamp(-1, 1) + 1) / 2 for z in noise)            # tensors, or iterables of them
    metrics.compute_metrics(real_uint8_batch, fake)

Preprocessing modes (`mode=`): 'pytorch-fid' (the default), 'torch-fidelity' and 'clean-fid'
(metrics.preprocess). The statistics are float64; features do not depend on the batch size on the
CPU; TF32 is off on GPUs.
"""
from inception_fast.metrics._compute import compute_metrics, compute_statistics, folder_features, tensor_features
from inception_fast.metrics._data import IMAGE_EXTENSIONS, list_images
from inception_fast.metrics._extractor import FeatureExtractor
from inception_fast.metrics._preprocess import MODES, preprocess, resize_bilinear_tf1
from inception_fast.metrics._stats import (FeatureStats, frechet_distance, inception_score, kernel_inception_distance,
                                           load_stats, save_stats)

__all__ = [
    "FeatureExtractor", "FeatureStats", "IMAGE_EXTENSIONS", "MODES", "compute_metrics", "compute_statistics",
    "folder_features", "frechet_distance", "inception_score", "kernel_inception_distance", "list_images",
    "load_stats", "preprocess", "resize_bilinear_tf1", "save_stats", "tensor_features",
]
