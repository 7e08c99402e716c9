"""The metrics of image folders (or saved statistics): FID, KID and the Inception Score, streaming
the features through FeatureStats so that they need not all be held (KID and IS hold theirs)."""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import torch

from inception_fast.metrics._data import batches, list_images, warn_unreadable
from inception_fast.metrics._extractor import FeatureExtractor
from inception_fast.metrics._stats import (FeatureStats, frechet_distance, inception_score, kernel_inception_distance,
                                           load_stats)


def default_workers(device: torch.device) -> int:
    """DataLoader processes decoding images: for a GPU the cores less one (at most 8), which decode
    while it runs; for the CPU none up to 4 cores, else a quarter of them. On the CPU the network
    takes every core: decoding and resizing a 256x256 JPEG costs ~2 ms against ~40 ms of network on
    2 cores, and a worker process preempting the network's threads costs more than it saves (27.0
    against 21.3 img/s measured on a 2-core Xeon)."""
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        return 0 if cores <= 4 else min(8, cores // 4)
    return min(8, max(1, cores - 1))


def _progress(label: str):
    """Progress on stderr: one line updated in place on a terminal; else (a log, a notebook's
    captured stream) a line at each tenth of the total, or each 10,000 images when the total is not
    known."""
    tty = sys.stderr.isatty()
    start, shown = time.perf_counter(), [0]

    def report(done: int, total: int | None, final: bool = False) -> None:
        rate = done / max(time.perf_counter() - start, 1e-9)
        line = f"{label}: {done}{'' if total is None else f'/{total}'} images, {rate:.1f} img/s"
        if tty:
            sys.stderr.write("\r" + line + ("\n" if final else ""))
        else:
            step = 10_000 if total is None else max(1, -(-total // 10))
            if not final and done // step == shown[0] // step:
                return
            if final and done == shown[0]:
                return
            sys.stderr.write(line + "\n")
        shown[0] = done
        sys.stderr.flush()

    return report


def _silent(*args, **kwargs) -> None:
    pass


def folder_features(folder, extractor: FeatureExtractor, batch_size: int = 50, workers: int | None = None,
                    progress: bool = True):
    """Yields the features ({tap: (n, width)}) of the images under folder, batch by batch, decoded
    and preprocessed in `workers` DataLoader processes (default: default_workers(); 0: in this
    process). Unreadable files are skipped and counted (a warning at the end)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    files = list_images(folder)
    report = _progress(os.fspath(folder)) if progress else _silent
    workers = default_workers(extractor.device) if workers is None else int(workers)
    unreadable, done = [], 0
    for batch, bad in batches(files, extractor.mode, batch_size, workers, pin_memory=extractor.device.type == "cuda"):
        unreadable += bad
        done += len(bad)
        if batch is not None:
            yield extractor.features(batch)
            done += len(batch)
        report(done, len(files))
    report(done, len(files), final=True)
    warn_unreadable(unreadable, len(files))
    if len(unreadable) == len(files):
        raise ValueError(f"none of the {len(files)} files in {os.fspath(folder)!r} could be read as an image")


def tensor_features(source, extractor: FeatureExtractor, batch_size: int = 50, progress: bool = True,
                    label: str = "images"):
    """Yields the features ({tap: (n, width)}) of images given as tensors: one (N, 3, H, W) batch
    (split into batch_size pieces) or an iterable of them (a generator of samples, a DataLoader; an
    item that is a tuple or list gives its first element, as (images, labels) loaders do). The
    images are what metrics.preprocess takes for the extractor's mode (uint8, or float in [0, 1] for
    'pytorch-fid' and in 0..255 for the others)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if isinstance(source, torch.Tensor):
        if source.dim() != 4 or source.shape[0] == 0:
            raise ValueError(f"images must be a non-empty (N, 3, H, W) batch, got shape {tuple(source.shape)}")
        total, items = source.shape[0], source.split(batch_size)
    else:
        try:
            total, items = None, iter(source)
        except TypeError:
            raise TypeError("a source is an image folder, an .npz of statistics, an (N, 3, H, W) tensor or an "
                            f"iterable of such batches, got {type(source).__name__}") from None
    report = _progress(label) if progress else _silent
    done = 0
    for i, item in enumerate(items):
        if isinstance(item, (tuple, list)) and item:
            item = item[0]
        if not isinstance(item, torch.Tensor):
            raise TypeError(f"item {i} of the images is a {type(item).__name__}, not an (N, 3, H, W) tensor")
        if item.dim() == 3:
            item = item[None]
        if item.shape[0] == 0:
            continue
        for piece in item.split(batch_size):
            yield extractor(piece)
        done += item.shape[0]
        report(done, total)
    report(done, total, final=True)
    if done == 0:
        raise ValueError("the images are empty: no batch with an image in it")


def _is_stats_file(source) -> bool:
    return isinstance(source, (str, os.PathLike)) and os.fspath(source).endswith(".npz")


def compute_metrics(path1, path2=None, *, fid: bool = True, kid: bool = False, isc: bool = False, dims: int = 2048,
                    weights=True, mode: str = "pytorch-fid", batch_size: int = 50, device: str = "cpu",
                    workers: int | None = None, kid_subsets: int = 100, kid_subset_size: int = 1000,
                    isc_splits: int = 10, save_stats: str | os.PathLike | None = None, progress: bool = True,
                    extractor: FeatureExtractor | None = None) -> dict:
    """FID (and KID / IS when asked) of two sets of images. Each is an image folder, an .npz of
    pytorch-fid's statistics ('mu', 'sigma'; FID only), an (N, 3, H, W) tensor of images or an
    iterable of such batches (a generator's samples, a DataLoader: see tensor_features). Returns
    {'fid', 'kid_mean', 'kid_std', 'is_mean', 'is_std'} for what was asked, with 'mu1', 'sigma1',
    'mu2', 'sigma2' (the statistics of the `dims` features). save_stats: write path1's statistics
    there (pytorch-fid's --save-stats). The Inception Score is path1's. extractor: a
    FeatureExtractor to use (weights, mode, device are then its own)."""
    sources = [path1] if path2 is None else [path1, path2]
    if (fid or kid) and path2 is None:
        raise ValueError("FID and KID compare two sets: pass path2")
    if (kid or isc) and any(_is_stats_file(s) for s in sources):
        raise ValueError("KID and the Inception Score need the images' features: statistics files hold only "
                         "mu and sigma (FID)")
    taps = (dims,) + (("logits_unbiased",) if isc else ())
    ext = extractor
    if ext is not None and not set(taps) <= set(ext.taps):
        raise ValueError(f"the extractor computes taps {ext.taps}; these metrics need {taps}")
    out: dict = {}
    held = {}
    for i, source in enumerate(sources, 1):
        if _is_stats_file(source):
            mu, sigma = load_stats(source)
            if mu.shape[0] != dims:
                raise ValueError(f"{os.fspath(source)!r} holds statistics of {mu.shape[0]} features; --dims is {dims}")
        else:
            if ext is None:
                ext = FeatureExtractor(weights, taps=taps, mode=mode, device=device)
            stats, keep, logits = FeatureStats(dims), [], []
            if isinstance(source, (str, os.PathLike)):
                feature_batches = folder_features(source, ext, batch_size, workers, progress)
            else:
                feature_batches = tensor_features(source, ext, batch_size, progress, f"images {i}")
            for feats in feature_batches:
                stats.update(feats[dims])
                if kid:
                    keep.append(feats[dims])
                if isc and i == 1:
                    logits.append(feats["logits_unbiased"])
            mu, sigma = stats.mean(), stats.covariance()
            held[i] = (torch.cat(keep) if keep else None, torch.cat(logits) if logits else None)
        out[f"mu{i}"], out[f"sigma{i}"] = mu, sigma
    if save_stats is not None:
        from inception_fast.metrics._stats import save_stats as _save

        _save(save_stats, out["mu1"], out["sigma1"])
    if fid:
        out["fid"] = frechet_distance(out["mu1"], out["sigma1"], out["mu2"], out["sigma2"])
    if kid:
        out.update(kernel_inception_distance(held[1][0], held[2][0], kid_subsets, kid_subset_size))
    if isc:
        out.update(inception_score(held[1][1], isc_splits))
    return out


def compute_statistics(path, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) of the `dims` features of a set of images (a folder, a tensor, an iterable of
    batches: as compute_metrics takes them), or of an .npz, read back."""
    r = compute_metrics(path, fid=False, **kwargs)
    return r["mu1"], r["sigma1"]
