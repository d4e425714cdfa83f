"""Row gathers (mmvit/models/gather.py): values and gradients against a one-hot reference, and gradients that
are the same bits on every repeat on a multi-threaded CPU (where ``table[idx]``'s backward is not)."""

import contextlib

import torch
import torch.nn.functional as F

from mmvit.models.gather import gather_rows
from mmvit.models.pooling import segment_softmax
from mmvit.models.pos_embed import LearnedFactorized


@contextlib.contextmanager
def threads(n: int):
    # The parallel CPU kernel of index_put_(accumulate=True) needs > 1 thread and >= 32768 elements.
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def test_gather_rows_matches_one_hot_reference():
    gen = torch.Generator().manual_seed(0)
    table = torch.randn(7, 3, 2, dtype=torch.float64, generator=gen, requires_grad=True)
    idx = torch.randint(0, 7, (50,), generator=gen)
    g = torch.randn(50, 3, 2, dtype=torch.float64, generator=gen)
    out = gather_rows(table, idx)
    out.backward(g)
    one_hot = F.one_hot(idx, 7).to(torch.float64)                               # [N, T]
    torch.testing.assert_close(out, (one_hot @ table.detach().flatten(1)).view(50, 3, 2), rtol=0, atol=0)
    torch.testing.assert_close(table.grad, (one_hot.T @ g.flatten(1)).view(7, 3, 2), rtol=1e-12, atol=1e-12)


def _grad_bits(fn, reps: int = 20) -> set[bytes]:
    seen = set()
    for _ in range(reps):
        seen.add(fn().numpy().tobytes())
    return seen


def test_gather_rows_backward_is_reproducible_on_cpu_threads():
    gen = torch.Generator().manual_seed(1)
    table0 = torch.randn(32, 64, generator=gen)
    idx = torch.randint(0, 32, (20000,), generator=gen)   # 1.3M accumulated elements, heavily repeated rows
    g = torch.randn(20000, 64, generator=gen)

    def grad():
        table = table0.clone().requires_grad_()
        gather_rows(table, idx).backward(g)
        return table.grad

    with threads(2):
        assert len(_grad_bits(grad)) == 1


def test_learned_position_embedding_gradient_is_reproducible():
    pe = LearnedFactorized(64, max_len=(4, 32, 32), fractional=True)
    gen = torch.Generator().manual_seed(2)
    n = 8192
    extent = torch.tensor([[2, 24, 24]]).expand(n, 3)
    coords = torch.stack([torch.randint(0, int(e), (n,), generator=gen) for e in extent[0]], dim=1)
    g = torch.randn(n, 64, generator=gen)

    def grad():
        pe.zero_grad(set_to_none=True)
        pe(coords, extent, None, None).backward(g)
        return torch.cat([t.grad.flatten() for t in pe.tables])

    with threads(2):
        assert len(_grad_bits(grad)) == 1


def test_segment_softmax_gradient_is_reproducible_and_correct():
    gen = torch.Generator().manual_seed(3)
    n, h, e = 12000, 4, 40
    scores0 = torch.randn(n, h, generator=gen)
    segment = torch.sort(torch.randint(0, e, (n,), generator=gen)).values
    g = torch.randn(n, h, generator=gen)

    def grad():
        scores = scores0.clone().requires_grad_()
        segment_softmax(scores, segment, e).backward(g)
        return scores.grad

    with threads(2):
        assert len(_grad_bits(grad, reps=10)) == 1
    # Reference: a dense softmax per segment in float64.
    s = scores0.double().requires_grad_()
    ref = torch.cat([torch.softmax(s[segment == k], dim=0) for k in range(e)])
    ref.backward(g.double())
    torch.testing.assert_close(grad().double(), s.grad, rtol=1e-4, atol=1e-6)
