"""End-to-end FID of two image folders on this machine: pytorch-fid, torch-fidelity, clean-fid and
ours (`inception_fast.metrics`, float32 in each preprocessing mode; bf16 where the CPU has native
bf16), each in a process of its own and one after the other, on the same JPEGs (written here) and
the same weights: with no network, a random FID Inception (BatchNorm statistics drawn too) saved in
pytorch-fid's format, handed to each (pytorch-fid through its weights URL pointed at the file,
torch-fidelity through feature_extractor_weights_path). Reports images/s over both folders, the
seconds of the distance, the total seconds, and each FID with its relative difference to the FID of
the package whose preprocessing it follows.

    python benchmarks/fid_end_to_end.py --images 2000 --out benchmarks/results/fid_cpu.md

clean-fid runs its own pipeline (compute_fid in its "clean" mode: PIL-bicubic resizing in its
DataLoader workers, numpy statistics, scipy's sqrtm) with pytorch-fid's network on the same weights as
its feature extractor: its own TorchScript network is a download. Its features and distance are timed
as one. Each of our rows in a peer's preprocessing mode is compared with that peer's FID.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

WORKER = r"""
import json, os, sys, time
import torch
cfg = json.loads(sys.argv[1])
a, b, weights, who = cfg["a"], cfg["b"], cfg["weights"], cfg["who"]
workers = cfg["workers"]
t0 = time.perf_counter()
if who.startswith("pytorch-fid"):
    from pytorch_fid import fid_score, inception
    inception.FID_WEIGHTS_URL = "file://" + weights
    torch.hub.set_dir(cfg["hub"])
    model = inception.InceptionV3([3]).eval()
    t1 = time.perf_counter()
    m1, s1 = fid_score.compute_statistics_of_path(a, model, cfg["batch"], 2048, "cpu", workers)
    m2, s2 = fid_score.compute_statistics_of_path(b, model, cfg["batch"], 2048, "cpu", workers)
    t2 = time.perf_counter()
    fid = fid_score.calculate_frechet_distance(m1, s1, m2, s2)
elif who == "clean-fid":
    from cleanfid import fid as cleanfid
    from pytorch_fid import inception
    inception.FID_WEIGHTS_URL = "file://" + weights
    torch.hub.set_dir(cfg["hub"])
    net = inception.InceptionV3([3], resize_input=False, normalize_input=False).eval()

    def extractor(x):  # clean-fid's batches: float 0..255 at 299x299; its own network normalises so
        return net((x - 128) / 128)[0].flatten(1)

    t1 = time.perf_counter()
    # clean-fid's compute_fid: its PIL-bicubic resize in DataLoader workers (12 by default), np.cov,
    # scipy's sqrtm; the features phase is not separable from the distance here
    fid = cleanfid.compute_fid(a, b, mode="clean", custom_feat_extractor=extractor, batch_size=cfg["batch"],
                               device=torch.device("cpu"), verbose=False,
                               **({} if workers is None else {"num_workers": workers}))
    t2 = time.perf_counter()
elif who == "torch-fidelity":
    import torch_fidelity
    from torch_fidelity.metric_fid import fid_featuresdict_to_statistics, fid_statistics_to_metric
    from torch_fidelity.utils import create_feature_extractor, extract_featuresdict_from_input_id
    kw = dict(input1=a, input2=b, cuda=False, batch_size=cfg["batch"], verbose=False,
              feature_extractor_weights_path=weights, save_cpu_ram=True)
    ext = create_feature_extractor("inception-v3-compat", ["2048"], **kw)
    t1 = time.perf_counter()
    stats = [fid_featuresdict_to_statistics(extract_featuresdict_from_input_id(i, ext, **kw), "2048") for i in (1, 2)]
    t2 = time.perf_counter()
    fid = fid_statistics_to_metric(stats[0], stats[1], False)["frechet_inception_distance"]
else:
    from inception_fast import metrics
    ext = metrics.FeatureExtractor(weights, mode=cfg["mode"], dtype=torch.bfloat16 if "bf16" in who else torch.float32)
    t1 = time.perf_counter()
    kw = dict(extractor=ext, batch_size=cfg["batch"], workers=workers, progress=False)
    (m1, s1), (m2, s2) = metrics.compute_statistics(a, **kw), metrics.compute_statistics(b, **kw)
    t2 = time.perf_counter()
    fid = metrics.frechet_distance(m1, s1, m2, s2)
t3 = time.perf_counter() if who != "clean-fid" else None
print(json.dumps({"setup_s": t1 - t0, "features_s": t2 - t1, "distance_s": None if t3 is None else t3 - t2,
                  "total_s": (t2 if t3 is None else t3) - t0, "fid": float(fid)}))
"""


def write_jpegs(folder: str, n: int, seed: int, side: int = 256) -> None:
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.uniform(0, 255, size=(1, 1, 3)) + 60 * np.sin(np.arange(side)[None, :, None] / rng.uniform(3, 12))
        img = np.clip(base + rng.normal(0, 25, size=(side, side, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def random_weights(path: str, folder: str) -> None:
    """Untrained weights whose BatchNorm statistics are those of the benchmark's own images (one
    training-mode pass over 32 of them, cumulative averages), so that the features have the scale of a
    trained network's rather than growing layer after layer."""
    from inception_fast import metrics
    from inception_fast.models import inception_v3_fid

    torch.manual_seed(0)
    model = inception_v3_fid(None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    files = metrics.list_images(folder)[:32]
    from PIL import Image

    x = torch.stack([torch.from_numpy(np.asarray(Image.open(f).convert("RGB")).copy()).permute(2, 0, 1) for f in files])
    with torch.no_grad():
        model.train()(metrics.preprocess(x))
    torch.save(model.state_dict(), path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=2000, help="JPEGs per folder (256x256)")
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--workers", type=int, default=None,
                   help="DataLoader workers for every contestant (default: each one's own: pytorch-fid's command "
                        "line min(8, cores), also run with 0; torch-fidelity's; ours)")
    p.add_argument("--only", nargs="*", default=None, help="contestants to run (default all)")
    p.add_argument("--out", default=None, help="append the Markdown table to this file")
    args = p.parse_args(argv)
    who = ["pytorch-fid", "pytorch-fid, 0 workers", "torch-fidelity", "clean-fid", "inception_fast fp32",
           "inception_fast fp32, torch-fidelity mode", "inception_fast fp32, clean-fid mode"]
    if torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        who.append("inception_fast bf16")
    who = [w for w in who if args.only is None or w in args.only]
    def peer(w: str) -> str:
        """The package whose preprocessing a row follows: its FID is the reference for the row."""
        if not w.startswith("inception_fast"):
            return "pytorch-fid"
        return w.split(", ")[1].removesuffix(" mode") if ", " in w else "pytorch-fid"

    with tempfile.TemporaryDirectory() as tmp:
        a, b, weights = os.path.join(tmp, "a"), os.path.join(tmp, "b"), os.path.join(tmp, "w.pth")
        write_jpegs(a, args.images, 1)
        write_jpegs(b, args.images, 2)
        random_weights(weights, a)
        rows = {}
        for w in who:
            workers = args.workers
            if workers is None and w.startswith("pytorch-fid"):
                workers = 0 if w.endswith("0 workers") else min(8, os.cpu_count() or 1)
            cfg = dict(a=a, b=b, weights=weights, who=w, mode=peer(w), batch=args.batch, workers=workers,
                       hub=os.path.join(tmp, "hub"))
            out = subprocess.run([sys.executable, "-c", WORKER, json.dumps(cfg)], capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{w} failed:\n{out.stderr[-3000:]}")
            rows[w] = json.loads(out.stdout.strip().splitlines()[-1])
            print(w, rows[w], flush=True)
    fastest_peer = min((r["total_s"] for k, r in rows.items() if not k.startswith("inception_fast")), default=None)
    workers = "each contestant's default" if args.workers is None else args.workers
    lines = [f"End-to-end FID, 2 x {args.images} JPEGs 256x256, batch {args.batch}, workers: {workers}; torch "
             f"{torch.__version__}, {os.cpu_count()} cores ({time.strftime('%Y-%m-%d')})", "",
             "| contestant | img/s | features s | distance s | total s | vs fastest peer | FID | FID rel. diff (vs) |",
             "|---|---|---|---|---|---|---|---|"]
    for w, r in rows.items():
        speed = f"{fastest_peer / r['total_s']:.2f}x" if fastest_peer else "-"
        ref = rows.get(peer(w), {}).get("fid")
        diff = f"{abs(r['fid'] - ref) / abs(ref):.1e} ({peer(w)})" if ref is not None and peer(w) != w else "-"
        dist = "-" if r["distance_s"] is None else f"{r['distance_s']:.2f}"
        lines.append(f"| {w} | {2 * args.images / r['features_s']:.1f} | {r['features_s']:.1f} | {dist} "
                     f"| {r['total_s']:.1f} | {speed} | {r['fid']:.6g} | {diff} |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "a") as f:
            f.write(table + "\n\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
