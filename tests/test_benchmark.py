"""Every benchmark runs on toy sizes (``--tiny``) and reports; no timing is asserted (machines are noisy)."""

import importlib.util
import json
import math
import os

import pytest
import torch

from mmvit.bench.common import Report
from mmvit.models.layout import build_layout
from tests.test_attention import _segments, reference

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
    # The speed table's reference packer and the real one agree row for row on the benchmark's lengths.
    from mmvit.bench.images import sample_sizes, token_counts
    from mmvit.packing import first_fit_decreasing

    lengths = token_counts(sample_sizes(500, seed=0))
    for seq_len in (256, 1024):
        assert pack.linear_first_fit_decreasing(lengths, seq_len) == first_fit_decreasing(lengths, seq_len)
    speed = report.tables[1].rows
    assert all(math.isfinite(r["rate"]) and r["rate"] > 0 for r in speed)


def test_streaming_packer_benchmark_fills_rows():
    from mmvit.bench.pack import streaming

    lengths = [3, 7, 2, 9, 4, 4, 1, 8, 6, 5] * 30
    r = streaming(lengths, 10, rows_per_batch=4, buffer=12, skip=0)
    assert r["padding"] < 0.05 and r["batches"] > 10


def test_attention():
    from mmvit.bench import attention

    report = attention.run(tiny=True, repeats=1)
    _check(report)
    rows = report.tables[0].rows
    assert {r["variant"] for r in rows} == set(attention.VARIANTS) and len(rows) == 2 * len(attention.VARIANTS)
    # Every variant computed dense's attention (float32 rounding only), and every ratio is a real number.
    assert all(r["err"] < 1e-5 for r in rows)
    assert all(math.isfinite(r["speedup"]) and r["speedup"] > 0 for r in rows)


def test_step():
    from mmvit.bench import step

    report = step.run(tiny=True, repeats=1)
    _check(report)
    names = [r["variant"] for r in report.tables[0].rows]
    assert names[:2] == ["mmvit packed", "mmvit padded to largest"]


def test_pretrain_rows_and_video_bar():
    from mmvit.bench import pretrain
    from mmvit.bench.common import ratio

    report = pretrain.run(tiny=True, repeats=1)
    _check(report)
    rows = {r["variant"]: r for r in report.tables[0].rows}
    assert ["supervised", "mae 0", "mae 0.75", "mae 0.9", "mae 0 (videos)", "mae 0.9 (videos)", "jepa"] == [
        n for n in rows if not n.startswith("matmul")]
    # Masking shrinks the encoder's input, never the decoder's: every token of the same inputs is decoded.
    assert rows["mae 0"]["enc"] > rows["mae 0.75"]["enc"] > rows["mae 0.9"]["enc"] > 0
    assert rows["mae 0 (videos)"]["enc"] > rows["mae 0.9 (videos)"]["enc"] > 0
    assert rows["mae 0"]["dec"] == rows["mae 0.9"]["dec"] == report.params["tokens"]
    assert rows["mae 0 (videos)"]["dec"] == rows["mae 0.9 (videos)"]["dec"] == report.params["video_tokens"]
    assert report.params["video_tokens"] < report.params["tokens"]
    # Encoder rows are sized to the visible tokens: shorter at higher ratios, never too short to hold them.
    rows_of = {n: tuple(int(v) for v in r["rows"].split(" x ")) for n, r in rows.items() if "rows" in r}
    for n, (b, length) in rows_of.items():
        assert b * length >= rows[n]["enc"] and length <= report.params["seq_len"], n
    assert rows_of["mae 0"][1] > rows_of["mae 0.75"][1] >= rows_of["mae 0.9"][1]
    assert rows_of["mae 0 (videos)"][1] > rows_of["mae 0.9 (videos)"][1]
    # Each speed-up is against mae 0 on the same inputs; the bar is the video one, from the same rounds.
    assert rows["mae 0"]["speed"] == rows["mae 0 (videos)"]["speed"] == 1.0
    (bar,) = report.bars
    assert "video" in bar.name and bar.op == ">=" and bar.target == 3.0
    times = report.raw["seconds_per_round"]
    assert bar.measured == ratio(times, "mae 0 (videos)", "mae 0.9 (videos)")
    assert all(math.isfinite(r["gflops"]) and r["gflops"] > 0 for r in rows.values())


def test_pretrain_sizes_from_the_command_line():
    main = _benchmark_main()
    with pytest.raises(SystemExit):
        main(["pretrain", "--tiny", "--encoder", "256"])


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

    report = io.run_loader(tiny=True, repeats=1)
    _check(report)
    demo, kinetics = report.tables
    for table, workers in ((demo, [0, 1, 2]), (kinetics, [0, 2])):
        rows = [r for r in table.rows if isinstance(r["workers"], int) and "cache" not in r["data"]]
        assert [r["workers"] for r in rows] == workers
        assert all(math.isfinite(r["rate"]) and r["rate"] > 0 and r["keeps_up"] > 0 for r in rows)
        assert all(0.0 <= r["padding"] < 1.0 and r["per_row"] > 0 for r in rows)
    cached = [r for r in demo.rows if r["data"] == "demo, cache_mb warm"]
    assert len(cached) == 1 and cached[0]["rate"] > 0 and 0.0 <= cached[0]["padding"] < 1.0
    assert math.isfinite(report.params["cache_speedup"]) and report.params["cache_speedup"] > 0
    assert 0.0 < report.params["kinetics_decode_share"] < 1.0
    assert 0.0 <= report.params["kinetics_image_share"] < 1.0
    assert len(report.bars) == 2 and all(b.measured is not None and b.measured > 0 for b in report.bars)


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


def test_step_precision():
    from mmvit.bench import precision

    report = precision.run(tiny=True, repeats=1, precisions=["fp32", "bf16", "autocast"])
    _check(report)
    rows = [r for r in report.tables[0].rows if r["variant"] in ("fp32", "bf16", "autocast")]
    assert [r["variant"] for r in rows] == ["fp32", "bf16", "autocast"]
    assert all(r["rate"] > 0 and r["speedup"] > 0 and 0 < r["util"] for r in rows)
    assert rows[0]["speedup"] == 1.0  # fp32 against itself, per round
    assert set(report.params["cpu_bf16_flags"]) == {"amx_bf16", "avx512_bf16"}


def test_precision_steps_train_alike():
    """The benchmark's bf16 step (bf16 weights, fp32 masters) and fp32 step start from the same weights and
    lower the loss alike over a few steps on the same batch."""
    from mmvit.bench import precision
    from mmvit.bench.images import make_images, sample_sizes

    images = make_images(sample_sizes(6, seed=2, side=(32, 64), patch=16), seed=0)
    labels = torch.arange(6) % 3
    cfg = precision.model_config(64, 1, 3, 16)
    losses = {}
    for p in ("fp32", "bf16"):
        step = precision.make_step(p, cfg, images, labels, 16, 128, 0, torch.device("cpu"))
        losses[p] = [step() for _ in range(8)]
    assert abs(losses["bf16"][0] - losses["fp32"][0]) < 0.02  # the same initial weights, rounded to bf16
    assert losses["bf16"][-1] < losses["bf16"][0] - 0.1 and abs(losses["bf16"][-1] - losses["fp32"][-1]) < 0.1


def test_cli_step_precision(tmp_path):
    out = tmp_path / "bench.json"
    assert _benchmark_main()(["step", "--precision", "fp32,bf16", "--widths", "64", "--tiny", "--repeats", "1",
                              "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["reports"][0]["name"] == "step precision" and data["machine"]["cpu_flags"]


# The benchmark's bucketed-attention variant (padding examples of similar lengths into one SDPA call) must be
# exact before its timing means anything.
@pytest.mark.parametrize("prefix", [0, 1])
@pytest.mark.parametrize("slack", [0.0, 0.5, 100.0])
def test_bucketed_attention_matches_reference(prefix, slack):
    seg = _segments([[5, 3, 3, 1], [7, 2], [3, 4, 2]], 12)
    layout = build_layout(seg, prefix=prefix)
    base = [torch.randn(layout.num_tokens, 2, 8, dtype=torch.float64) for _ in range(3)]
    ref_in = [t.clone().requires_grad_() for t in base]
    ref = reference(*ref_in, layout.token_example)
    g = torch.randn_like(ref)
    (ref * g).sum().backward()
    ins = [t.clone().requires_grad_() for t in base]
    from mmvit.bench.attention import attend_bucketed

    out = attend_bucketed(*ins, layout, slack=slack)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    (out * g).sum().backward()
    for a, b in zip(ins, ref_in):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9)


def test_buckets_cover_groups_in_order():
    from mmvit.bench.attention import buckets

    groups = [(0, 2, 2), (4, 1, 3), (7, 3, 5), (22, 1, 20)]
    for slack in (0.0, 0.3, 10.0):
        parts = buckets(groups, slack)
        assert [g for b in parts for g in b] == groups
    assert len(buckets(groups, 0.0)) == 4 and len(buckets(groups, 1e9)) == 1
