"""Without the compiled extension (a failed build, a wheel built for another torch): the package
imports, says once why its kernels are missing, and every model -- fused path, optimize(), a
training step -- gives the peers' numbers on the reference ops. The missing build is simulated in a
fresh process by refusing the imports of inception_fast._C and inception_fast._onednn."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent

_SCRIPT = textwrap.dedent("""
    import importlib.abc, json, sys, warnings

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name in ("inception_fast._C", "inception_fast._onednn"):
                raise ImportError(f"{name} refused by the test")
            return None

    sys.meta_path.insert(0, Refuse())
    sys.path.insert(0, TESTS)
    warnings.simplefilter("always")
    with warnings.catch_warnings(record=True) as caught:
        import pytest, torch
        import inception_fast
        from inception_fast import ops
        from _helpers import rel_err
        from _peers import CASES, CASE_IDS, pair

        report = {"backends": ops.available_backends("cpu"), "cases": {}}
        torch.manual_seed(0)
        for case, case_id in zip(CASES, CASE_IDS):
            try:
                peer, ours = pair(case)
            except pytest.skip.Exception as e:
                report["cases"][case_id] = {"skipped": str(e)}
                continue
            x = torch.randn(2, 3, case.small or case.native, case.small or case.native)
            with torch.no_grad():
                ref = peer(x)
                fused = ours(x)
                net = inception_fast.optimize(ours)
                opt = [net(x) for _ in range(3)][-1]  # the third call replays the recorded forward
            report["cases"][case_id] = {"fused": rel_err(fused, ref), "optimize": rel_err(opt, ref)}

        # a training step of the fused path against the reference path: the same loss and gradients
        # (in float64: a float32 step of many batch-statistics BatchNorms at a small input is chaotic)
        from inception_fast import models
        from inception_fast.layers import use_fused
        net = models.googlenet(num_classes=5, aux_logits=False, drop_rate=0.0).double().train()
        x, y = torch.randn(4, 3, 64, 64, dtype=torch.float64), torch.tensor([0, 1, 2, 3])
        grads = {}
        for fused in (True, False):
            net.zero_grad()
            with use_fused(fused):
                torch.nn.functional.cross_entropy(net(x), y).backward()
            grads[fused] = torch.cat([p.grad.flatten() for p in net.parameters()])
        report["train_grad"] = rel_err(grads[True], grads[False])
    report["warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught
                          if "inception_fast" in str(w.message)]
    print("REPORT " + json.dumps(report))
""")


def _run_without_extension() -> dict:
    script = f"TESTS = {str(TESTS)!r}\n" + _SCRIPT
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    line = next(x for x in r.stdout.splitlines() if x.startswith("REPORT "))
    return json.loads(line[len("REPORT "):])


def test_without_the_extension_the_models_give_the_peers_numbers():
    report = _run_without_extension()
    # one warning, at import, naming the cause
    assert len(report["warnings"]) == 1, report["warnings"]
    warning = report["warnings"][0]
    assert warning.startswith("RuntimeWarning: inception_fast: the compiled extension inception_fast._C did not load")
    assert "inception_fast._C refused by the test" in warning and "inception_fast._onednn refused" in warning
    assert report["backends"] == ["reference"]
    ran = {k: v for k, v in report["cases"].items() if "skipped" not in v}
    # torchvision and timm are test dependencies: their five cases always run
    assert {"googlenet", "inception_v3-torchvision", "inception_v3-timm", "inception_v4",
            "inception_resnet_v2"} <= set(ran), report["cases"]
    for case_id, errs in ran.items():
        assert errs["fused"] < 1e-5, (case_id, errs)
        assert errs["optimize"] < 1e-4, (case_id, errs)  # BatchNorm folded into the weights
    assert report["train_grad"] < 1e-6
