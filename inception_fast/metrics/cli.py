"""`inception-fast fid PATH1 PATH2`: FID (and KID, IS) of two image folders or pytorch-fid statistics
files, as pytorch-fid's command line prints it (its last line `FID: <value>`)."""
from __future__ import annotations

import argparse
import sys

from inception_fast.metrics._preprocess import MODES
from inception_fast.models.inception_v3_fid import FID_TAPS


def add_fid_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="+", metavar="PATH",
                   help="two image folders (png, jpg, bmp, webp, ...; any sizes, searched recursively) or .npz "
                        "statistics files (pytorch-fid's: mu, sigma); one folder with --save-stats or --isc only")
    p.add_argument("--dims", type=int, default=2048, choices=sorted(FID_TAPS),
                   help="the features: 64, 192, 768 or 2048 (pool3, the default), as pytorch-fid's --dims")
    p.add_argument("--batch-size", type=int, default=50, help="images per forward (default 50)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when there is one)")
    p.add_argument("--weights", default=None, metavar="FILE",
                   help="the FID Inception's weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth or "
                        "torch-fidelity's file); default: the published file, downloaded once")
    p.add_argument("--mode", default="pytorch-fid", choices=MODES,
                   help="preprocessing as pytorch-fid (default), torch-fidelity or clean-fid does it")
    p.add_argument("--workers", type=int, default=None, help="DataLoader processes decoding images "
                   "(default: on a GPU the cores less one, at most 8; on the CPU none up to 4 cores, else a "
                   "quarter of them)")
    p.add_argument("--save-stats", default=None, metavar="OUT.npz",
                   help="write the first PATH's statistics (mu, sigma) to OUT.npz, as pytorch-fid's --save-stats")
    p.add_argument("--kid", action="store_true", help="also the kernel inception distance (torch-fidelity's)")
    p.add_argument("--kid-subset-size", type=int, default=1000, help="KID subset size (default 1000)")
    p.add_argument("--kid-subsets", type=int, default=100, help="KID subsets (default 100)")
    p.add_argument("--isc", action="store_true", help="also the Inception Score of the first PATH")
    p.add_argument("--isc-splits", type=int, default=10, help="Inception Score splits (default 10)")


def fid_command(args: argparse.Namespace) -> int:
    import torch

    from inception_fast.metrics._compute import compute_metrics

    paths = args.path
    only_first = args.save_stats is not None or args.isc
    if len(paths) > 2 or (len(paths) == 1 and not only_first):
        print("inception-fast fid: error: give two PATHs (or one with --save-stats / --isc)", file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    weights = True if args.weights is None else args.weights
    two = len(paths) == 2
    try:
        r = compute_metrics(paths[0], paths[1] if two else None, fid=two, kid=args.kid and two, isc=args.isc,
                            dims=args.dims, weights=weights, mode=args.mode, batch_size=args.batch_size,
                            device=device, workers=args.workers, kid_subsets=args.kid_subsets,
                            kid_subset_size=args.kid_subset_size, isc_splits=args.isc_splits,
                            save_stats=args.save_stats)
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # bad input, or no weights without a network
        print(f"inception-fast fid: error: {e}", file=sys.stderr)
        return 2
    if args.save_stats is not None:
        print(f"statistics of {paths[0]} saved to {args.save_stats}")
    if "is_mean" in r:
        print(f"IS: {r['is_mean']:.6g} +- {r['is_std']:.6g}")
    if "kid_mean" in r:
        print(f"KID: {r['kid_mean']:.6g} +- {r['kid_std']:.6g}")
    if "fid" in r:
        print(f"FID: {r['fid']}")
    return 0
