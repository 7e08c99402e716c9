"""Image-folder data for training runs: the papers' augmentation, per-sample seeding, bad files
skipped and counted, and the built-in demo data set.

- `ImageFolderData`: an ImageFolder layout (`DIR/train/<class>/*`, `DIR/val/<class>/*`, or one
  `DIR/<class>/*` split by a fraction) with clear errors for a missing folder or an empty class.
- Augmentation as in the Inception papers: random-resized crops of `min_area`..100% of the image
  with aspect ratio 3/4..4/3, a random interpolation per crop, photometric distortion (brightness,
  contrast, saturation, hue) and horizontal flips; evaluation resizes to size / crop_pct and crops
  the centre. Normalisation is the model's (`pretrained_cfg`: mean/std, and BN-Inception's BGR
  0..255 input).
- Each sample is augmented with a generator seeded by (seed, epoch, index): the same image gets the
  same crop whichever process or worker loads it, so a resumed run and a multi-process run see
  exactly the batches a single uninterrupted run sees.
- A file that cannot be decoded is skipped and counted (`collate` drops it; the training loop
  reports how many), never a crash in the middle of an epoch.
- `make_demo_data(root)`: the built-in default, generated on the fly (no download): a small
  three-class data set of drawn shapes (circle, square, triangle) in random colours, sizes and
  positions on noisy backgrounds. A demo for checking that a run works end to end, not a benchmark.
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path

import torch

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _torchvision():
    try:
        import torchvision  # noqa: F401
        from torchvision import transforms
    except ImportError as e:  # pragma: no cover - exercised only without torchvision
        raise ImportError("training on an image folder needs torchvision (pip install torchvision matching your "
                          "torch, or pip install inception-fast[train])") from e
    return transforms


def _seed_of(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index) % (2 ** 63 - 1)


class _Normalize:
    """ToTensor + the model's normalisation (BN-Inception: BGR channels in 0..255 minus its mean)."""

    def __init__(self, cfg: dict):
        self.mean = torch.tensor(cfg.get("mean", (0.485, 0.456, 0.406)), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(cfg.get("std", (0.229, 0.224, 0.225)), dtype=torch.float32).view(-1, 1, 1)
        self.bgr = cfg.get("input_space", "RGB") == "BGR"
        self.scale = float(cfg.get("input_range", (0, 1))[1])

    def __call__(self, img) -> torch.Tensor:
        from torchvision.transforms import functional as TF

        x = TF.to_tensor(img)
        if self.bgr:
            x = x.flip(0)
        return (x * self.scale - self.mean) / self.std


def train_transform(size: int, cfg: dict, min_area: float = 0.08, photometric: float = 0.4):
    """The papers' training augmentation (see the module docstring), then the model's normalisation."""
    transforms = _torchvision()
    from torchvision.transforms import InterpolationMode

    crops = [transforms.RandomResizedCrop(size, scale=(min_area, 1.0), ratio=(3 / 4, 4 / 3), interpolation=mode)
             for mode in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC, InterpolationMode.NEAREST)]
    steps = [transforms.RandomChoice(crops), transforms.RandomHorizontalFlip()]
    if photometric > 0:
        steps.append(transforms.ColorJitter(brightness=photometric, contrast=photometric, saturation=photometric,
                                            hue=min(0.5, photometric / 4)))
    steps.append(_Normalize(cfg))
    return transforms.Compose(steps)


def eval_transform(size: int, cfg: dict):
    """Resize to size / crop_pct (the model's interpolation), centre crop `size`, normalise."""
    transforms = _torchvision()
    from torchvision.transforms import InterpolationMode

    crop_pct = float(cfg.get("crop_pct", 0.875))
    mode = InterpolationMode.BICUBIC if cfg.get("interpolation") == "bicubic" else InterpolationMode.BILINEAR
    return transforms.Compose([transforms.Resize(int(math.floor(size / crop_pct)), interpolation=mode),
                               transforms.CenterCrop(size), _Normalize(cfg)])


def _scan(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """(classes, [(path, class index)]) of an ImageFolder-layout folder, with errors that name it."""
    if not root.is_dir():
        raise FileNotFoundError(f"data folder {str(root)!r} does not exist (expected <class>/<image> subfolders, "
                                f"or train/ and val/ holding them)")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"data folder {str(root)!r} has no class subfolders (expected {root}/<class>/<image>)")
    samples = []
    for i, c in enumerate(classes):
        files = sorted(p for p in (root / c).rglob("*") if p.is_file() and p.suffix.lower() in IMG_EXTENSIONS)
        if not files:
            raise ValueError(f"class folder {str(root / c)!r} has no images (extensions {', '.join(IMG_EXTENSIONS)}); "
                             "remove it or add images")
        samples += [(str(p), i) for p in files]
    return classes, samples


class SampleSet(torch.utils.data.Dataset):
    """(path, label) samples loaded with PIL and transformed with a per-sample seeded generator;
    an unreadable file gives None (dropped by `collate`)."""

    def __init__(self, samples: list[tuple[str, int]], transform, seed: int = 0):
        self.samples = samples
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[index]
        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except (OSError, UnidentifiedImageError, ValueError):
            return None
        # torchvision's transforms draw from torch's and Python's global generators.
        state, py_state = torch.random.get_rng_state(), random.getstate()
        s = _seed_of(self.seed, self.epoch, index)
        torch.manual_seed(s)
        random.seed(s)
        try:
            x = self.transform(img)
        finally:
            torch.random.set_rng_state(state)
            random.setstate(py_state)
        return x, label


def collate(batch):
    """Stack the readable samples; also return how many were dropped as unreadable."""
    good = [b for b in batch if b is not None]
    skipped = len(batch) - len(good)
    if not good:
        return None, None, skipped
    return torch.stack([b[0] for b in good]), torch.tensor([b[1] for b in good]), skipped


class ImageFolderData:
    """The train/val samples and classes of a data folder (see the module docstring)."""

    def __init__(self, root: str | os.PathLike, val_split: float = 0.1, seed: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {str(root)!r} does not exist")
        if (root / "train").is_dir():
            self.classes, self.train = _scan(root / "train")
            self.val = []
            if (root / "val").is_dir():
                val_classes, self.val = _scan(root / "val")
                if val_classes != self.classes:
                    raise ValueError(f"{root}/val has the classes {val_classes} but {root}/train has {self.classes}")
        else:
            self.classes, samples = _scan(root)
            if not 0.0 <= val_split < 1.0:
                raise ValueError(f"val_split must be in [0, 1), got {val_split}")
            order = list(range(len(samples)))
            random.Random(seed).shuffle(order)
            n_val = int(round(len(samples) * val_split))
            self.val = [samples[i] for i in sorted(order[:n_val])]
            self.train = [samples[i] for i in sorted(order[n_val:])]
        if not self.train:
            raise ValueError(f"no training images in {root}")


SHAPES = ("circle", "square", "triangle")


def make_demo_data(root: str | os.PathLike, per_class: int = 40, val_per_class: int = 10, size: int = 96,
                   seed: int = 0) -> Path:
    """Write the built-in demo data set (drawn shapes, three classes) as train/ and val/ image folders
    under root, once (an existing complete copy is reused). Returns root."""
    from PIL import Image, ImageDraw

    root = Path(root)
    marker = root / ".complete"
    if marker.exists():
        return root
    rng = random.Random(seed)
    for split, n in (("train", per_class), ("val", val_per_class)):
        for label in SHAPES:
            d = root / split / label
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                bg = tuple(rng.randrange(0, 256) for _ in range(3))
                img = Image.new("RGB", (size, size), bg)
                px = img.load()
                for _ in range(size * size // 8):  # background noise
                    x, y = rng.randrange(size), rng.randrange(size)
                    px[x, y] = tuple(min(255, max(0, c + rng.randint(-60, 60))) for c in bg)
                draw = ImageDraw.Draw(img)
                r = rng.uniform(0.18, 0.38) * size
                cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
                fg = tuple((c + rng.randrange(96, 160)) % 256 for c in bg)
                if label == "circle":
                    draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fg)
                elif label == "square":
                    draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fg)
                else:
                    a = rng.uniform(0, 2 * math.pi)
                    draw.polygon([(cx + r * math.cos(a + k * 2 * math.pi / 3), cy + r * math.sin(a + k * 2 * math.pi / 3))
                                  for k in range(3)], fill=fg)
                img.save(d / f"{label}_{i:03d}.png")
    marker.write_text("inception_fast demo data: drawn shapes, generated on the fly\n")
    return root
