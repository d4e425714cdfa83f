"""The three attention backends against a slow per-example reference, and the mask against xformers'."""

import pytest
import torch

from mmvit.models import xformers_ops
from mmvit.models.attention import attend_dense, attend_segments, attend_xformers
from mmvit.models.layout import build_layout


def _segments(lengths_per_row, seq_len):
    rows = []
    e = 1
    for lens in lengths_per_row:
        row = []
        for n in lens:
            row += [e] * n
            e += 1
        rows.append(row + [0] * (seq_len - len(row)))
    return torch.tensor(rows)


def reference(q, k, v, example):
    """float64 softmax(q k^T / sqrt(d)) v, one example at a time."""
    out = torch.zeros_like(q, dtype=torch.float64)
    for e in example.unique():
        idx = (example == e).nonzero().flatten()
        qe, ke, ve = (t[idx].double().transpose(0, 1) for t in (q, k, v))   # [H, n, d]
        a = torch.softmax(qe @ ke.transpose(1, 2) / q.shape[-1] ** 0.5, -1)
        out[idx] = (a @ ve).transpose(0, 1)
    return out


@pytest.mark.parametrize("prefix", [0, 1])
def test_backends_match_reference_outputs_and_grads(prefix):
    seg = _segments([[5, 3, 3, 1], [7, 2], [3, 3, 3]], 12)
    layout = build_layout(seg, prefix=prefix)
    n, h, d = layout.num_tokens, 2, 8
    base = [torch.randn(n, h, d, dtype=torch.float64) for _ in range(3)]
    ref_in = [t.clone().requires_grad_() for t in base]
    ref = reference(*ref_in, layout.token_example)
    g = torch.randn_like(ref)
    (ref * g).sum().backward()
    for fn in (attend_segments, attend_dense):
        ins = [t.clone().requires_grad_() for t in base]
        out = fn(*ins, layout)
        torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
        (out * g).sum().backward()
        for a, b in zip(ins, ref_in):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-9, atol=1e-9)


def test_layout_groups_equal_lengths_contiguously():
    seg = _segments([[4, 2, 4], [2, 4]], 10)
    layout = build_layout(seg)
    assert layout.seqlens == [2, 2, 4, 4, 4]
    assert layout.groups == [(0, 2, 2), (4, 3, 4)]
    # Tokens of example e are contiguous in the trunk and in order of their batch position.
    for e in range(5):
        pos = layout.token_pos[layout.patch_example == e]
        assert torch.equal(pos, torch.arange(int(pos[0]), int(pos[0]) + len(pos)))


def test_dense_mask_equals_xformers_materialize():
    if not xformers_ops.available():
        pytest.skip("xformers is not installed")
    seg = _segments([[5, 3, 1], [4, 4]], 9)
    layout = build_layout(seg)
    n = layout.num_tokens
    bias = xformers_ops.block_diagonal_mask(layout.seqlens).materialize((n, n))
    assert torch.equal(bias == 0, layout.dense_mask)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="xformers kernels need CUDA")
def test_xformers_matches_segments_on_cuda():
    if not xformers_ops.available():
        pytest.skip("xformers is not installed")
    seg = _segments([[50, 30, 17], [64, 33]], 128).cuda()
    layout = build_layout(seg)
    q, k, v = (torch.randn(layout.num_tokens, 4, 32, device="cuda", dtype=torch.bfloat16, requires_grad=True)
               for _ in range(3))
    out = attend_xformers(q, k, v, layout)
    ref = attend_segments(q.float(), k.float(), v.float(), layout)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    out.float().sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
