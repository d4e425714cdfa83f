"""The attention backends against a slow per-example reference, the mask against xformers', and FlexAttention's
block mask against torch's own create_block_mask."""

import shutil

import pytest
import torch

import mmvit
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


# -- FlexAttention (mmvit/models/flex_attention.py) -----------------------------------------------------

def _tiles(bm):
    """{(q tile, kv tile)} listed as partial and as full in a BlockMask."""
    def listed(num, idx):
        num, idx = num[0, 0].tolist(), idx[0, 0].tolist()
        return {(i, j) for i, (n, row) in enumerate(zip(num, idx)) for j in row[:n]}
    return listed(bm.kv_num_blocks, bm.kv_indices), listed(bm.full_kv_num_blocks, bm.full_kv_indices)


@pytest.mark.parametrize("seqlens,block,pad_to", [
    ([300, 7, 129, 500], 128, None),   # N = 936: the last tile is cut at the sequence end
    ([300, 7, 129, 500], 128, 1024),   # padded as attend() pads: every padding token its own example
    ([16, 16, 40, 3, 1, 60], 16, None),
    ([5], 16, 64),
])
def test_flex_block_mask_equals_torch_create_block_mask(seqlens, block, pad_to):
    """The tiles built from each tile's first and last example are the ones torch's create_block_mask finds by
    evaluating the mask on all N x N pairs."""
    from torch.nn.attention.flex_attention import create_block_mask

    from mmvit.models import flex_attention as fa

    ours = fa.document_block_mask(seqlens, "cpu", pad_to=pad_to, block=block)
    doc = fa.document_ids(seqlens, "cpu", pad_to=pad_to)
    n = doc.numel()
    ref = create_block_mask(lambda b, h, q, kv: doc[q] == doc[kv], 1, 1, n, n, device="cpu", BLOCK_SIZE=block)
    assert ours.seq_lengths == ref.seq_lengths == (n, n)
    assert _tiles(ours) == _tiles(ref)
    assert torch.equal(ours.to_dense(), ref.to_dense())
    # The q-major transposes (used by the backward) agree too.
    assert torch.equal(ours.q_num_blocks, ref.q_num_blocks) and torch.equal(ours.full_q_num_blocks,
                                                                             ref.full_q_num_blocks)


def test_flex_document_ids_give_padding_its_own_examples():
    from mmvit.models import flex_attention as fa

    ids = fa.document_ids([3, 2], "cpu", pad_to=8)
    assert ids.tolist() == [0, 0, 0, 1, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="shorter"):
        fa.document_ids([3, 2], "cpu", pad_to=4)
    assert fa.padded_length(1) == fa.padded_length(1024) == 1024 and fa.padded_length(1025) == 2048


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("prefix", [0, 1])
def test_flex_forward_matches_reference_on_cpu_float64(prefix):
    """FlexAttention runs forward on CPU (torch 2.13, no grad): exact against the float64 per-example reference,
    with the sequence padded as the backend pads it. (Eager mode evaluates the mask on every pair; the tile
    lists are checked above against torch's and executed by the compiled test below.)"""
    from mmvit.models import flex_attention as fa

    layout = build_layout(_segments([[50, 30, 17], [64, 33, 2, 2]], 128), prefix=prefix)
    q, k, v = (torch.randn(layout.num_tokens, 2, 8, dtype=torch.float64) for _ in range(3))
    bm = fa.layout_block_mask(layout, torch.device("cpu"))
    assert bm.seq_lengths[0] == fa.padded_length(layout.num_tokens)
    assert fa.layout_block_mask(layout, torch.device("cpu")) is bm  # built once per layout
    with torch.no_grad():
        out = fa.flex(q, k, v, bm, compiled=False)
    torch.testing.assert_close(out, reference(q, k, v, layout.token_example), rtol=1e-10, atol=1e-10)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on CPU needs a C++ compiler")
def test_flex_compiled_forward_matches_reference_on_cpu_float32():
    """Compiled, FlexAttention skips the tiles the BlockMask leaves out (and the mask function on full tiles):
    this executes our tile lists. float32, forward only (about 15 s to compile on 2 cores)."""
    import warnings

    from mmvit.models import flex_attention as fa

    layout = build_layout(_segments([[300, 7, 129], [500, 2]], 512))   # partial and full tiles, padded to 1024
    q, k, v = (torch.randn(layout.num_tokens, 2, 16) for _ in range(3))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = fa.flex(q, k, v, fa.layout_block_mask(layout, torch.device("cpu")), compiled=True)
    torch.testing.assert_close(out.double(), reference(q, k, v, layout.token_example), rtol=1e-5, atol=1e-5)


def test_flex_is_refused_on_cpu_with_the_reason():
    from mmvit.models import flex_attention as fa
    from tests.conftest import tiny_model

    model = tiny_model(attention="flex").eval()
    batch = mmvit.pack([torch.randn(3, 16, 24), torch.randn(3, 8, 8)], patch_size=8, seq_len=16)
    for grad in (False, True):
        with torch.set_grad_enabled(grad), pytest.raises(RuntimeError) as err:
            model(batch)
        assert str(err.value) == fa.CPU_REFUSAL
    assert "no backward" in fa.CPU_REFUSAL and "'segments'" in fa.CPU_REFUSAL


def test_auto_never_picks_flex(monkeypatch):
    from mmvit.models import attention

    assert attention.resolve_backend("auto", torch.device("cpu")) == "segments"
    monkeypatch.setattr(xformers_ops, "available", lambda: False)
    assert attention.resolve_backend("auto", torch.device("cuda")) == "segments"
    monkeypatch.setattr(xformers_ops, "available", lambda: True)
    assert attention.resolve_backend("auto", torch.device("cuda")) == "xformers"
    assert attention.resolve_backend("flex", torch.device("cuda")) == "flex"
    with pytest.raises(ValueError, match="flex"):
        attention.resolve_backend("flash", torch.device("cuda"))


def test_backends_see_one_dtype_when_norms_run_in_fp32(monkeypatch):
    """CUDA autocast runs layer_norm in fp32 while the qkv linear gives bf16: xformers and FlexAttention refuse
    mixed dtypes, so q and k are cast to v's dtype before the backend (as SDPA would cast them)."""
    from mmvit.models import attention

    seen = []

    def record(q, k, v, layout):
        seen.append((q.dtype, k.dtype, v.dtype))
        return attend_dense(q, k, v, layout)

    monkeypatch.setitem(attention._FUNCS, "dense", record)
    attn = attention.Attention(32, 2, backend="dense").to(torch.bfloat16)

    class Fp32Norm(torch.nn.Module):  # stands in for layer_norm under CUDA autocast
        def forward(self, x):
            return x.float()

    attn.q_norm, attn.k_norm = Fp32Norm(), Fp32Norm()
    layout = build_layout(_segments([[3, 2]], 5))
    out = attn(torch.randn(5, 32, dtype=torch.bfloat16), layout)
    assert seen == [(torch.bfloat16,) * 3] and out.dtype == torch.bfloat16


def test_xformers_kernel_probe_explains_without_cuda():
    assert xformers_ops.kernels_usable("cpu") == "xformers attention kernels need CUDA"
    if not torch.cuda.is_available():
        assert xformers_ops.kernels_usable("cuda") == "no CUDA device"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention's backward needs CUDA")
def test_flex_matches_segments_on_cuda_with_gradients():
    from mmvit.models import flex_attention as fa

    seg = _segments([[50, 30, 17], [64, 33]], 128).cuda()
    layout = build_layout(seg)
    base = [torch.randn(layout.num_tokens, 4, 32, device="cuda", dtype=torch.bfloat16) for _ in range(3)]
    ins = [t.clone().requires_grad_() for t in base]
    ref_in = [t.float().clone().requires_grad_() for t in base]
    out = fa.attend(*ins, layout)
    ref = attend_segments(*ref_in, layout)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)
    g = torch.randn_like(ref)
    (out.float() * g).sum().backward()
    (ref * g).sum().backward()
    for a, b in zip(ins, ref_in):
        torch.testing.assert_close(a.grad.float(), b.grad, rtol=5e-2, atol=5e-2)
