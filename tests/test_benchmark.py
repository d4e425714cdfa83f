"""Every benchmark runs on toy sizes (``--tiny``) and reports; no timing is asserted (machines are noisy)."""

import importlib.util
import json
import os

from mmvit.bench.common import Report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _benchmark_main():
    spec = importlib.util.spec_from_file_location("benchmark_tool", os.path.join(ROOT, "tools", "benchmark.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def _check(report: Report) -> None:
    data = report.to_json()
    json.dumps(data)
    assert report.markdown().startswith(f"### {report.name}")
    if report.skipped is None:
        assert report.tables and all(t.rows for t in report.tables)


def test_pack():
    from mmvit.bench import pack

    report = pack.run(tiny=True, repeats=1)
    _check(report)
    rows = report.tables[0].rows
    assert all(0.0 <= r["padding"] < 1.0 and r["per_row"] >= 1.0 for r in rows)


def test_streaming_packer_loses_nothing_and_fills_rows():
    from mmvit.bench.pack import streaming

    lengths = [3, 7, 2, 9, 4, 4, 1, 8, 6, 5] * 30
    r = streaming(lengths, 10, rows_per_batch=4, buffer=12, skip=0)
    assert r["padding"] < 0.05 and r["batches"] > 10


def test_attention():
    from mmvit.bench import attention

    _check(attention.run(tiny=True, repeats=1))


def test_step():
    from mmvit.bench import step

    report = step.run(tiny=True, repeats=1)
    _check(report)
    names = [r["variant"] for r in report.tables[0].rows]
    assert names[:2] == ["mmvit packed", "mmvit padded to largest"]


def test_step_flop_count_by_hand():
    from mmvit.bench.step import train_flops

    # One example of 2 tokens, width 1, depth 1, MLP 1, 1 pixel per patch, 1 class.
    flops = train_flops([2], width=1, depth=1, mlp_dim=1, patch_dim=1, num_classes=1)
    assert flops == 6 * 2 * 6 + 12 * 4 + 4 * 2 + 6 * 2 * 4 + 6 * 5


def test_gpu_runs_or_skips():
    from mmvit.bench import gpu

    report = gpu.run(tiny=True, repeats=1)
    _check(report)


def test_loader():
    from mmvit.bench import io

    _check(io.run_loader(tiny=True, repeats=1))


def test_decode():
    from mmvit.bench import decode, io

    report = io.run_decode(tiny=True, repeats=1)
    _check(report)
    rows = [r for r in report.tables[0].rows if "ratio" in r]
    # Every variant returned the requested frames (their coded indices) at its size; ratios are real numbers.
    assert rows and all(r["ok"] is True for r in rows if r["variant"] != "limit")
    assert all(decode.finite_positive(r["ratio"]) for r in rows)
    # The PyAV reader decodes exactly the frames the limit decodes: none twice, none it does not need.
    for r in rows:
        if r["variant"].startswith("pyav"):
            limit = next(x for x in rows if x["video"] == r["video"] and x["job"] == r["job"] and x["variant"] == "limit")
            assert r["decoded"] == limit["decoded"]
    assert {b.name.split()[0] for b in report.bars} == {"pyav", "decord"} and all(b.holds is None for b in report.bars)


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert _benchmark_main()(["pack", "--tiny", "--repeats", "1", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["machine"]["torch"] and data["reports"][0]["name"] == "pack"
    assert all(b["holds"] is None for b in data["reports"][0]["bars"])  # tiny runs are not judged
    assert "### pack" in capsys.readouterr().out


def test_peers_load_or_explain():
    from mmvit.bench import peers

    for module in peers.PEERS.values():
        mod, why = peers.load(module)
        assert (mod is not None and hasattr(mod, "NaViT")) or "vit-pytorch" in why


def test_step_skips_missing_peers_with_a_note(monkeypatch):
    from mmvit.bench import peers, step

    monkeypatch.setattr(peers, "load", lambda module: (None, f"vit-pytorch is not installed ({peers.INSTALL})"))
    report = step.run(tiny=True, repeats=1)
    assert [r["variant"] for r in report.tables[0].rows][:2] == ["mmvit packed", "mmvit padded to largest"]
    assert sum("skipped" in n for n in report.notes) == len(peers.PEERS)
    assert report.bars[1].measured is None
