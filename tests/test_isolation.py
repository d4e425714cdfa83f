"""The heart of mmvit: an example's output and gradient do not depend on what else is packed with it."""

import pytest
import torch

import mmvit
from tests.conftest import tiny_model

CONFIGS = {
    "map-learned-segments": {},
    "map-learned-dense": {"attention": "dense"},
    "mean-sinusoidal-frac": {"pool": "mean", "pos_embed": {"type": "sinusoidal", "fractional": True}},
    "cls-grid2d-bias": {"pool": "cls", "bias": True, "qk_norm": False,
                        "pos_embed": {"type": "grid2d", "grid_size": [4, 4]}},
    "map-fourier-tubelet": {"tokenizer": {"type": "central_frame", "frames": 2},
                            "pos_embed": {"type": "fourier", "fractional": True}},
    "map-learnedfrac-tubelet-inflate": {"tokenizer": {"type": "tubelet", "frames": 2, "init": "inflate"},
                                        "pos_embed": {"type": "learned", "fractional": True}},
}


def _others(gen):
    return [torch.randn(3, 8 * int(torch.randint(1, 4, (), generator=gen)),
                        8 * int(torch.randint(1, 4, (), generator=gen)), generator=gen) for _ in range(7)] + \
           [torch.randn(3, 4, 16, 8, generator=gen), torch.randn(3, 2, 8, 8, generator=gen)]


def _output_and_grads(model, samples, index, patch_size, seq_len, weight):
    x = samples[index].clone().requires_grad_()
    samples = list(samples)
    samples[index] = x
    batch = mmvit.pack(samples, patch_size=patch_size, seq_len=seq_len)
    e = batch.example_ids.tolist().index(index)
    out = model(batch)[e]
    model.zero_grad()
    (out * weight).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach(), x.grad.clone(), grads, batch


@pytest.mark.parametrize("name", list(CONFIGS))
def test_isolation(name):
    model = tiny_model(**CONFIGS[name]).train()  # train mode without drop-path: must still be isolated
    video = "frames" in CONFIGS[name].get("tokenizer", {})
    ps = (2, 8, 8) if video else (1, 8, 8)
    gen = torch.Generator().manual_seed(1)
    target = torch.randn(3, 4, 24, 16, generator=gen) if video else torch.randn(3, 24, 16, generator=gen)
    weight = torch.randn(5, generator=gen)

    alone = _output_and_grads(model, [target], 0, ps, 24, weight)
    others = _others(gen)
    for pos, seq_len in [(0, 24), (3, 32), (len(others), 48)]:
        samples = others[:pos] + [target] + others[pos:]
        packed = _output_and_grads(model, samples, pos, ps, seq_len, weight)
        assert packed[3].num_examples == len(samples)
        torch.testing.assert_close(packed[0], alone[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(packed[1], alone[1], rtol=1e-5, atol=1e-5)
        for n, g in alone[2].items():
            torch.testing.assert_close(packed[2][n], g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")


def test_padding_never_influences():
    model = tiny_model().eval()
    samples = [torch.randn(3, 16, 24), torch.randn(3, 8, 8)]
    b = mmvit.pack(samples, patch_size=8, seq_len=16)
    ref = model(b)
    pad = b.segment_ids == 0
    b.patches[pad] = torch.randn(int(pad.sum()), b.patches.shape[-1]) * 100
    b.coords[pad] = 7
    torch.testing.assert_close(model(b), ref)
    tokens = model.forward_tokens(b)
    assert (tokens[pad] == 0).all() and tokens.shape == (*b.shape, 32)


def test_eval_is_deterministic_and_drop_path_only_in_training():
    model = tiny_model(drop_path=0.5)
    b = mmvit.pack([torch.randn(3, 16, 16) for _ in range(4)], patch_size=8, seq_len=16)
    model.eval()
    assert torch.equal(model(b), model(b))
    model.train()
    outs = [model(b) for _ in range(4)]
    assert any(not torch.allclose(outs[0], o) for o in outs[1:])


def test_backends_agree_on_the_model():
    gen = torch.Generator().manual_seed(2)
    samples = _others(gen)
    b = mmvit.pack(samples, patch_size=(1, 8, 8), seq_len=40)
    seg, dense = tiny_model(), tiny_model(attention="dense")
    dense.load_state_dict(seg.state_dict())
    torch.testing.assert_close(seg(b), dense(b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(seg.forward_tokens(b), dense.forward_tokens(b), rtol=1e-5, atol=1e-5)


def test_gradient_checkpointing_same_gradients():
    b = mmvit.pack([torch.randn(3, 16, 24), torch.randn(3, 8, 16)], patch_size=8, seq_len=16)
    m1, m2 = tiny_model(), tiny_model(grad_checkpointing=True)
    m2.load_state_dict(m1.state_dict())
    for m in (m1, m2):
        m.train()
        m(b).square().sum().backward()
    for (n, p1), p2 in zip(m1.named_parameters(), m2.parameters()):
        torch.testing.assert_close(p1.grad, p2.grad, msg=lambda m: f"{n}: {m}")
