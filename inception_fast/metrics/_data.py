"""Image folders for the metrics: files decoded (PIL) and preprocessed in DataLoader workers, so that
the network, not the input, sets the pace; an unreadable file is skipped and counted, not fatal."""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from inception_fast.metrics._preprocess import preprocess

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")


def list_images(folder: str | os.PathLike) -> list[str]:
    """The image files under folder (recursively, by extension, sorted), after a clear error when
    there is no such folder or no image in it."""
    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"no folder at {folder!r}")
    files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder) for f in names
                   if f.lower().endswith(IMAGE_EXTENSIONS))
    if not files:
        raise ValueError(f"no images in {folder!r} (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return files


class ImageFiles(torch.utils.data.Dataset):
    """files -> the FID network's input (3, 299, 299) float32, preprocessed as `mode` does it; an
    unreadable file gives None (see collate)."""

    def __init__(self, files: list[str], mode: str = "pytorch-fid"):
        self.files = list(files)
        self.mode = mode

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        try:
            with Image.open(self.files[i]) as im:
                rgb = np.asarray(im.convert("RGB"))
        except Exception as e:  # truncated, corrupt or not an image at all
            return self.files[i], repr(e)
        x = torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None]
        return preprocess(x, self.mode)[0]


def collate(samples):
    """(the batch of the readable samples or None, [(file, error) of the unreadable ones])"""
    good = [s for s in samples if isinstance(s, torch.Tensor)]
    bad = [s for s in samples if not isinstance(s, torch.Tensor)]
    return (torch.stack(good) if good else None), bad


def batches(files: list[str], mode: str, batch_size: int, workers: int, pin_memory: bool):
    """(batch or None, unreadable) pairs over files, decoded and preprocessed by `workers` processes."""
    loader = torch.utils.data.DataLoader(ImageFiles(files, mode), batch_size=batch_size, shuffle=False,
                                         num_workers=workers, collate_fn=collate, pin_memory=pin_memory,
                                         persistent_workers=False, prefetch_factor=4 if workers else None)
    yield from loader


def warn_unreadable(unreadable: list, total: int) -> None:
    if unreadable:
        shown = "; ".join(f"{f}: {e}" for f, e in unreadable[:3])
        warnings.warn(f"{len(unreadable)} of {total} files could not be read and were skipped ({shown}"
                      f"{'; ...' if len(unreadable) > 3 else ''})", stacklevel=3)
