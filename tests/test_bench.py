"""`inception-fast bench` and `inception-fast report`: a real (tiny) run, the JSON it writes, the
report from it and from a stored pytest-benchmark JSON, and the command line."""
import json
import math
from pathlib import Path

import pytest
import torch

from inception_fast import bench

STORED = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "cpu_models_epyc-zen4_2core.json"


def test_bench_runs_both_paths_and_records_the_machine(tmp_path):
    out = tmp_path / "run.json"
    assert bench.main(["bench", "--models", "googlenet", "--batch", "2", "--size", "32", "--train-batch", "2",
                       "--train-size", "32", "--rounds", "1", "--json", str(out), "--no-progress"]) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["torch"] == torch.__version__ and data["machine"]["device"] == "cpu"
    assert data["settings"]["order"] == "interleaved"
    rows = {(r["kind"], r["contestant"]): r for r in data["results"]}
    assert set(rows) == {(k, c) for k in ("inference", "training step") for c in ("eager", "fused")} | {
        ("inference", "optimized")}
    for (kind, contestant), r in rows.items():
        assert r["seconds"] > 0 and r["images_per_s"] == pytest.approx(r["batch"] / r["seconds"])
        assert r["size"] == 32 and r["batch"] == 2
        # the error column measures something: 0 for eager against itself, small but real for fused
        assert r["rel_err"] == 0.0 if contestant == "eager" else 0.0 <= r["rel_err"] < 1e-4


def test_bench_compile_contestant(tmp_path, capsys):
    # The contestant's plumbing through aot_eager (graph capture, no code generation: seconds, not
    # the minute inductor takes here); test_models.py runs a model through inductor end to end.
    out = tmp_path / "run.json"
    assert bench.main(["bench", "--models", "googlenet", "--batch", "2", "--size", "32", "--rounds", "1",
                       "--only", "inference", "--compile", "--compile-backend", "aot_eager", "--json", str(out),
                       "--no-progress"]) == 0
    data = json.loads(out.read_text())
    rows = {r["contestant"]: r for r in data["results"]}
    assert set(rows) == {"eager", "fused", "compile", "optimized"}
    assert data["settings"]["contestants"] == ["eager", "fused", "compile"]
    assert data["settings"]["compile_backend"] == "aot_eager"
    assert 0.0 <= rows["compile"]["rel_err"] < 1e-4
    table = capsys.readouterr().out
    assert "compile vs eager" in table and "compile rel. err" in table and "fused rel. err" in table


def test_report_from_our_json(tmp_path):
    results = [bench.Result("inception_v3", "inference", c, "cpu", "float32", "nchw", 8, 299, s, e)
               for c, s, e in (("eager", 0.8, 0.0), ("fused", 0.5, 2e-7))]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"machine": {"cpu": "TestCPU"}, "results": [r.__dict__ for r in results]}))
    paths = bench.report(path)
    md = paths["markdown"].read_text()
    assert "| inception_v3 | inference | cpu float32 nchw b8 299px | 10.0 | 16.0 | 1.60x | 2.0e-07 |" in md
    assert "TestCPU" in md
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.skipif(not STORED.exists(), reason="no stored model benchmark JSON")
def test_report_from_stored_pytest_benchmark_json(tmp_path):
    results, machine = bench.load_results(STORED)
    models = {r.model for r in results}
    assert models == {"googlenet", "bn_inception", "inception_v3", "inception_v4", "inception_resnet_v1",
                      "inception_resnet_v2"}
    assert {r.contestant for r in results} >= {"eager", "fused", "peer"}
    assert all(r.seconds > 0 and not math.isnan(r.rel_err) for r in results)
    paths = bench.report(STORED, tmp_path)
    md = paths["markdown"].read_text()
    assert md.count("\n| ") == len({(r.model, r.kind) for r in results})  # a row per model and pass
    assert "fused vs eager" in md and "peer vs eager" in md
    assert (tmp_path / (STORED.stem + ".png")).exists()


def test_report_rejects_other_json(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="neither inception-fast bench JSON"):
        bench.report(path)


def test_command_line():
    parser = bench.build_parser()
    args = parser.parse_args(["bench", "--models", "inception_v4", "--only", "training", "--no-channels-last"])
    assert args.models == ["inception_v4"] and args.only == "training" and args.channels_last is False
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--models", "resnet50"])
    args = parser.parse_args(["report", "a.json", "--no-chart"])
    assert args.command == "report" and args.no_chart
