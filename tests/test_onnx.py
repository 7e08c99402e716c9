"""ONNX: each model, as a user builds it (the fused path by default), exports with both of torch's
exporters (TorchScript-based and dynamo) with a dynamic batch, and ONNX Runtime gives the peer's
numbers at another batch size; an optimize()d model says how to export instead."""
import pytest
import torch

from _helpers import rel_err
from _peers import CASE_IDS, CASES, pair
from inception_fast import optimize

ort = pytest.importorskip("onnxruntime", reason="ONNX Runtime is a test dependency (pip install -e .[test])")
pytest.importorskip("onnxscript", reason="the dynamo exporter needs onnxscript (a test dependency)")


def _export(model, x, path, dynamo):
    if dynamo:
        torch.onnx.export(model, (x,), path, dynamo=True, input_names=["images"], output_names=["logits"],
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=256)},), verbose=False)
    else:
        torch.onnx.export(model, (x,), path, dynamo=False, input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_export_runs_in_onnx_runtime_with_the_peers_numbers(case, dynamo, tmp_path):
    peer, ours = pair(case)
    side = case.small or case.native
    path = tmp_path / "model.onnx"
    _export(ours, torch.randn(2, 3, side, side), path, dynamo)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, side, side)  # another batch size than the export's
    (y,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        ref = peer(x)
    assert rel_err(torch.from_numpy(y), ref) < 1e-4


def test_an_optimized_model_says_how_to_export(tmp_path):
    _, ours = pair(CASES[0])
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(RuntimeError, match=r"export the model itself, torch.onnx.export\(model"):
        torch.onnx.export(optimize(ours), (x,), tmp_path / "m.onnx", dynamo=False)
