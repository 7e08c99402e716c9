"""From images to the FID network's input (3 x 299 x 299 in [-1, 1]), as each package does it:

- 'pytorch-fid' (the default): float RGB in [0, 1] (uint8 is divided by 255, as torchvision's
  ToTensor does), resized to 299 bilinearly (F.interpolate, align_corners=False, antialias off), then
  2x - 1;
- 'torch-fidelity': uint8 RGB (float in 0..255 taken as it is), resized to 299 with TensorFlow 1's
  bilinear rule (source pixel = output pixel * in / out, no half-pixel offset), then (x - 128) / 128;
- 'clean-fid': uint8 RGB (float in 0..255 taken as it is), each channel resized to 299 by PIL's
  bicubic filter in float32 and clipped to 0..255 (clean-fid's "clean" mode), then (x - 128) / 128.
  PIL runs on the CPU (in the DataLoader workers for folders).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("pytorch-fid", "torch-fidelity", "clean-fid")
SIZE = 299


def _tf1_axis(n_in: int, n_out: int, device):
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out  # TensorFlow's float scale
    src = torch.arange(n_out, dtype=torch.float32) * scale
    lo = src.floor()
    frac = (src - lo).to(device)
    lo = lo.long()
    hi = (lo + 1).clamp(max=n_in - 1)
    return lo.to(device), hi.to(device), frac


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """TensorFlow 1.x's tf.image.resize_bilinear(align_corners=False) of an (N, C, H, W) float32
    batch, with its order of operations (each row's horizontal lerp, then the vertical one between
    the top and bottom rows), as torch-fidelity uses it: the same bits. The horizontal lerp of each
    source row is done once (or only for the rows used, when they are fewer)."""
    lo_y, hi_y, fy = _tf1_axis(x.shape[-2], size[0], x.device)
    lo_x, hi_x, fx = _tf1_axis(x.shape[-1], size[1], x.device)
    if x.shape[-2] > 2 * size[0]:
        x = x.index_select(-2, torch.cat([lo_y, hi_y]))
        lo_y = torch.arange(size[0], device=x.device)
        hi_y = lo_y + size[0]
    g = x.index_select(-1, torch.cat([lo_x, hi_x]))
    left, right = g[..., :size[1]], g[..., size[1]:]
    rows = left + (right - left) * fx.to(x.dtype)
    top, bottom = rows.index_select(-2, lo_y), rows.index_select(-2, hi_y)
    return top + (bottom - top) * fy.to(x.dtype)[:, None]


def preprocess(images: torch.Tensor, mode: str = "pytorch-fid") -> torch.Tensor:
    """images (N, 3, H, W; uint8, or float as the mode takes it: [0, 1] for 'pytorch-fid', 0..255 for
    the others; out of range raises ValueError) as the FID network's float32 input (N, 3, 299, 299)
    in [-1, 1], the way `mode` (MODES) prepares it."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or images.shape[1] != 3:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"images must be an (N, 3, H, W) RGB batch, got {shape}")
    if images.is_floating_point():
        if images.numel():
            _check_range(images, mode)
    elif images.dtype != torch.uint8:
        raise TypeError(f"images must be uint8 (0..255) or floating point, got {images.dtype}")
    if mode == "pytorch-fid":
        x = images.float() / 255 if images.dtype == torch.uint8 else images.float()
        x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
        return 2 * x - 1
    if mode == "clean-fid":
        x = resize_bicubic_pil(images, (SIZE, SIZE)).to(images.device)
    else:
        x = resize_bilinear_tf1(images.float(), (SIZE, SIZE))
    return (x - 128) / 128


_warned_unit_range = set()


def _check_range(images: torch.Tensor, mode: str) -> None:
    """Float images must be in the mode's range ([0, 1] for 'pytorch-fid', 0..255 for the others), up
    to a thousandth of it: a generator's [-1, 1] output or images on the wrong scale would otherwise
    give features, and a FID, that mean nothing. NaN passes (NaN out). A float batch all within
    [0, 1] in a 0..255 mode is warned about once per mode."""
    top = 1.0 if mode == "pytorch-fid" else 255.0
    lo, hi = (float(v) for v in torch.aminmax(images.detach()))
    if lo < -top / 1000 or hi > top * 1.001:
        fix = " (a [-1, 1] output maps with (x + 1) / 2)" if mode == "pytorch-fid" else ""
        raise ValueError(f"mode {mode!r} takes uint8 images or floats in [0, {top:g}]; got values in "
                         f"[{lo:.4g}, {hi:.4g}]: rescale or clamp them{fix}")
    if mode != "pytorch-fid" and hi <= 1.0 and mode not in _warned_unit_range:
        import warnings

        _warned_unit_range.add(mode)
        warnings.warn(f"float images all within [0, 1] in mode {mode!r}, which takes 0..255 as torch-fidelity "
                      "and clean-fid do: multiply [0, 1] images by 255 (or pass uint8)", stacklevel=3)


def resize_bicubic_pil(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Each channel of each image (N, C, H, W; values 0..255) resized by PIL's bicubic filter as a
    float32 image, clipped to 0..255, as clean-fid does; float32 on the CPU."""
    import numpy as np
    from PIL import Image

    arr = images.detach().to("cpu", torch.float32).numpy()
    out = np.empty((arr.shape[0], arr.shape[1], size[0], size[1]), dtype=np.float32)
    for i in range(arr.shape[0]):
        for c in range(arr.shape[1]):
            img = Image.fromarray(arr[i, c], mode="F").resize((size[1], size[0]), resample=Image.BICUBIC)
            out[i, c] = np.asarray(img).clip(0, 255)
    return torch.from_numpy(out)
