"""MAE and JEPA on packed batches: targets and losses against a slow per-example reference, isolation of
examples (loss and gradients the same packed alone or with others), and JEPA's target encoder."""

import math

import numpy as np
import pytest
import torch

import mmvit.models.layout as layout_mod
from mmvit.packing import as_video, grid_coords, patchify
from mmvit.pretrain import JEPA, MAE, MaskConfig, pack_masked, plan_masks
from mmvit.pretrain.objectives import norm_pix
from mmvit.models.build import build_model
from mmvit.train.engine import param_groups

PS = (2, 8, 8)


def _cfg(backend="segments", objective="mae"):
    enc = {"variant": "Ti/16", "width": 32, "depth": 2, "heads": 2, "mlp_dim": 64, "patch_size": 8,
           "num_classes": 0, "tokenizer": {"type": "tubelet", "frames": 2, "init": "inflate"},
           "pos_embed": {"type": "learned", "fractional": True}, "attention": backend}
    dec = {"width": 16, "depth": 2, "heads": 2, "mlp_dim": 32, "attention": backend}
    return {"encoder": enc, ("decoder" if objective == "mae" else "predictor"): dec}


def _build(objective, cfg, **extra):
    """The objective around an encoder built from ``cfg["encoder"]`` (as the trainer builds ``model:``)."""
    cfg = dict(cfg)
    enc = build_model(cfg.pop("encoder"))
    return (MAE if objective == "mae" else JEPA)(enc, **cfg, **extra)


def _model(objective, backend="segments"):
    torch.manual_seed(0)
    model = _build(objective, _cfg(backend, objective))
    if objective == "jepa":
        with torch.no_grad():  # a target encoder unlike the context encoder, as after some EMA steps
            for p in model.target_encoder.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return model.train()


def _others(gen):
    """Images and videos of 2..12 tokens at patch (2, 8, 8)."""
    out = [torch.randn(3, 8 * int(torch.randint(1, 4, (), generator=gen)),
                       8 * int(torch.randint(2, 4, (), generator=gen)), generator=gen) for _ in range(6)]
    return out + [torch.randn(3, 4, 16, 8, generator=gen), torch.randn(3, 2, 16, 24, generator=gen),
                  torch.randn(3, 6, 8, 16, generator=gen)]


def _target(kind, gen):
    return torch.randn(3, 4, 24, 24, generator=gen) if kind == "video" else torch.randn(3, 24, 32, generator=gen)


# -- slow reference: one example alone, unpacked, attention written out -----------------------------------


def _ref_attention(attn, x):
    n = len(x)
    q, k, v = attn.qkv(x).view(n, 3, attn.heads, attn.head_dim).unbind(1)
    q, k = attn.q_norm(q), attn.k_norm(k)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(attn.head_dim)
    return attn.proj(torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, -1))


def _ref_trunk(blocks, norm, x):
    for b in blocks:
        x = x + _ref_attention(b.attn, b.norm1(x))
        x = x + b.mlp(b.norm2(x))
    return norm(x)


def _ref_encode(enc, pixels, coords, grid, idx):
    g = torch.tensor(grid)
    x = enc.tokenizer(pixels[idx], PS)
    x = x + enc.pos_embed(coords[idx], g.expand(len(idx), 3), torch.zeros(len(idx), dtype=torch.long), g[None])
    return _ref_trunk(enc.blocks, enc.norm, x)


def _ref_loss(model, sample, visible):
    """The example's loss computed alone: encoder on its visible tokens, decoder on its full grid."""
    pixels, grid = patchify(as_video(sample, PS[0]), PS)
    n = len(pixels)
    coords, g = grid_coords(grid), torch.tensor(grid)
    dec = model.decoder if isinstance(model, MAE) else model.predictor
    ctx = _ref_encode(model.model, pixels, coords, grid, visible)
    y = dec.mask_token.expand(n, -1).clone()
    y[visible] = dec.embed(ctx)
    y = y + dec.pos_embed(coords, g.expand(n, 3), torch.zeros(n, dtype=torch.long), g[None])
    y = dec.head(_ref_trunk(dec.blocks, dec.norm, y))
    masked = torch.ones(n, dtype=torch.bool)
    masked[visible] = False
    if isinstance(model, MAE):
        t = pixels[masked]
        p = t.shape[1]
        mean = t.sum(1, keepdim=True) / p
        var = ((t - mean) ** 2).sum(1, keepdim=True) / (p - 1)
        return ((y[masked] - (t - mean) / torch.sqrt(var + 1e-6)) ** 2).mean()
    with torch.no_grad():
        h = _ref_encode(model.target_encoder, pixels, coords, grid, torch.arange(n))[masked]
        d = h.shape[1]
        mean = h.sum(1, keepdim=True) / d
        h = (h - mean) / torch.sqrt(((h - mean) ** 2).sum(1, keepdim=True) / d + 1e-5)
    return (y[masked] - h).abs().mean()


def _masks(samples, preset, seed=0):
    return plan_masks(samples, PS, MaskConfig(preset=preset), np.random.default_rng(seed))


def test_norm_pix_matches_the_per_patch_formula():
    x = torch.randn(7, 48, dtype=torch.float64) * 3 + 1
    out = norm_pix(x, 1e-6)
    for i in range(7):
        row = x[i].tolist()
        mean = sum(row) / len(row)
        var = sum((v - mean) ** 2 for v in row) / (len(row) - 1)
        assert out[i].tolist() == pytest.approx([(v - mean) / math.sqrt(var + 1e-6) for v in row], abs=1e-12)


def test_norm_pix_per_channel_normalises_each_channel_slice_alone():
    x = torch.randn(5, 3 * 16, dtype=torch.float64) * 2 - 1
    x[:, 16:32] += 5.0                      # a hue: channel 1 brighter everywhere
    out = norm_pix(x, 1e-6, channels=3)
    for c in range(3):                      # channel-major: values c*16 .. c*16+15 are channel c
        part = x[:, 16 * c:16 * (c + 1)]
        mean = part.mean(1, keepdim=True)
        var = part.var(1, keepdim=True)
        assert torch.allclose(out[:, 16 * c:16 * (c + 1)], (part - mean) / (var + 1e-6).sqrt(), atol=1e-12)
    # the hue is gone: shifting one channel by a constant leaves the target unchanged
    assert torch.allclose(norm_pix(x - torch.cat([torch.zeros(16), torch.full((16,), 5.0), torch.zeros(16)]).double(),
                                   1e-6, channels=3), out, atol=1e-9)
    with pytest.raises(ValueError, match="channels"):
        norm_pix(x[:, :47], 1e-6, channels=3)


@pytest.mark.parametrize("channels", [1, 3])
def test_norm_pix_keeps_its_input_and_the_out_of_place_values(channels):
    # norm_pix divides its own temporary in place on broadcast statistics: the input is untouched, the values
    # are bit for bit those of the out-of-place formula on each channel slice, and a target that requires
    # grad still back-propagates.
    x = torch.randn(5, 1536) * 3 + 1
    before = x.clone()
    size = 1536 // channels
    ref = torch.cat([(s - s.mean(1, keepdim=True)) / (s.var(1, keepdim=True) + 1e-6).sqrt()
                     for s in x.split(size, dim=1)], dim=1)
    assert torch.equal(norm_pix(x, 1e-6, channels), ref) and torch.equal(x, before)
    y = x.clone().requires_grad_()
    out = norm_pix(y, 1e-6, channels)
    out.square().sum().backward()
    assert torch.equal(out.detach(), ref) and torch.isfinite(y.grad).all()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_squared_error_mean_is_the_plain_expression_bit_for_bit(seed):
    # MAE's per-token loss has its own backward (fewer [M, P] temporaries); values and gradients must be
    # exactly those autograd gives for (pred - target).square().mean(-1).
    from mmvit.pretrain.objectives import squared_error_mean

    gen = torch.Generator().manual_seed(seed)
    m, p = 37 + 20 * seed, 96 * (seed + 1)
    pred, target = torch.randn(m, p, generator=gen) * 2, torch.randn(m, p, generator=gen)
    weight = torch.rand(m, generator=gen)
    a, b = pred.clone().requires_grad_(), pred.clone().requires_grad_()
    plain = (a - target).square().mean(-1)
    fused = squared_error_mean(b, target)
    (plain * weight).sum().backward()
    (fused * weight).sum().backward()
    assert torch.equal(plain, fused) and torch.equal(a.grad, b.grad)
    with torch.no_grad():
        assert torch.equal(squared_error_mean(pred, target), plain)


def test_mae_targets_are_the_masked_pixels_normalised_per_patch():
    gen = torch.Generator().manual_seed(0)
    samples = _others(gen)
    visible = _masks(samples, "mae")
    batch = pack_masked(samples, visible, patch_size=PS, seq_len=12, full_seq_len=16)
    model = _model("mae")
    pred = model.predict(batch)
    target = model.targets(batch, pred.slots)
    raw = _build("mae", _cfg(), norm_pix_loss=False).targets(batch, pred.slots)
    rows = 0
    for e in range(batch.num_examples):
        i = batch.example_ids[e].item()
        pixels, _ = patchify(as_video(samples[i], PS[0]), PS)
        masked = torch.ones(len(pixels), dtype=torch.bool)
        masked[visible[i]] = False
        mine = pred.example == e
        # Masked tokens of the example in the full batch's slot order, which follows the patch order.
        assert torch.equal(raw[mine], pixels[masked])
        mean, std = pixels[masked].mean(1, keepdim=True), pixels[masked].var(1, keepdim=True)
        torch.testing.assert_close(target[mine], (pixels[masked] - mean) / (std + 1e-6).sqrt())
        rows += int(mine.sum())
    assert rows == len(pred.slots) == batch.full.num_tokens - batch.num_tokens


@pytest.mark.parametrize("objective", ["mae", "jepa"])
def test_loss_matches_a_slow_per_example_reference(objective):
    gen = torch.Generator().manual_seed(1)
    samples = _others(gen) + [_target("video", gen), _target("image", gen)]
    visible = _masks(samples, objective)
    batch = pack_masked(samples, visible, patch_size=PS, seq_len=24, full_seq_len=24)
    model = _model(objective)
    out = model(batch)
    weights = model.token_weights(batch)
    assert out.losses.shape == weights.shape == (len(samples),)
    for e, i in enumerate(batch.example_ids.tolist()):
        ref = _ref_loss(model, samples[i], visible[i])
        torch.testing.assert_close(out.losses[e], ref, rtol=1e-5, atol=1e-5)
        n = int(np.prod(batch.grid[e].tolist()))
        assert weights[e].item() == n - len(visible[i])


def _loss_and_grads(model, samples, visible, index, seq_len, full_seq_len):
    batch = pack_masked(samples, visible, patch_size=PS, seq_len=seq_len, full_seq_len=full_seq_len)
    e = batch.example_ids.tolist().index(index)
    out = model(batch)
    model.zero_grad()
    out.losses[e].backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    f = batch.full.parent_index.tolist().index(e)

    def where(b, ex):  # (row, first position) of an example
        rows, pos = torch.nonzero(b.segment_ids == ex + 1, as_tuple=True)
        return int(rows[0]), int(pos[0])

    return out.losses[e].detach(), model.token_weights(batch)[e].item(), grads, (where(batch, e), where(batch.full, f))


def _isolation(objective, backend, kind):
    model = _model(objective, backend)
    gen = torch.Generator().manual_seed(2)
    # A clip longer than the target, so that first-fit-decreasing does not always put the target first.
    target, others = _target(kind, gen), _others(gen) + [torch.randn(3, 4, 32, 32, generator=gen)]
    preset = "mae" if objective == "mae" else "jepa"
    vis_t = _masks([target], preset, seed=5)[0]
    vis_o = _masks(others, preset, seed=6)
    full_t = int(np.prod(patchify(as_video(target, PS[0]), PS)[1]))
    alone = _loss_and_grads(model, [target], [vis_t], 0, len(vis_t), full_t)
    places = {alone[3]}
    longest = max(len(v) for v in vis_o + [vis_t])
    for pos, seq_len, full_seq_len in [(0, longest, 32), (3, longest + 5, 39), (len(others), 2 * longest, 52)]:
        samples = others[:pos] + [target] + others[pos:]
        visible = vis_o[:pos] + [vis_t] + vis_o[pos:]
        packed = _loss_and_grads(model, samples, visible, pos, seq_len, full_seq_len)
        places.add(packed[3])
        torch.testing.assert_close(packed[0], alone[0], rtol=1e-5, atol=1e-5)
        assert packed[1] == alone[1]
        assert packed[2].keys() == alone[2].keys()
        for n, g in alone[2].items():
            torch.testing.assert_close(packed[2][n], g, rtol=1e-4, atol=1e-5, msg=lambda m: f"{n}: {m}")
    # The example sat in different rows / positions of both packings.
    assert len({p[0] for p in places}) > 1 and len({p[1] for p in places}) > 1, places


@pytest.mark.parametrize("kind", ["image", "video"])
@pytest.mark.parametrize("backend", ["segments", "dense"])
@pytest.mark.parametrize("objective", ["mae", "jepa"])
def test_isolation(objective, backend, kind):
    _isolation(objective, backend, kind)


def test_isolation_test_catches_attention_leaking_across_examples(monkeypatch):
    """With a dense all-true mask (examples attend to each other) the isolation check must fail."""
    monkeypatch.setattr(layout_mod.SeqLayout, "dense_mask",
                        property(lambda self: torch.ones(self.num_tokens, self.num_tokens, dtype=torch.bool)))
    with pytest.raises(AssertionError, match="not close"):
        _isolation("mae", "dense", "image")


def test_jepa_target_encoder_gets_no_gradient_and_no_optimizer():
    gen = torch.Generator().manual_seed(3)
    samples = _others(gen)
    batch = pack_masked(samples, _masks(samples, "jepa"), patch_size=PS, seq_len=16, full_seq_len=16)
    model = _model("jepa")
    model(batch).losses.sum().backward()
    target_params = {id(p) for p in model.target_encoder.parameters()}
    assert all(not p.requires_grad and p.grad is None for p in model.target_encoder.parameters())
    # Every optimised parameter of the context encoder gets a gradient; the MAP pool (unused) is frozen.
    for n, p in model.model.named_parameters():
        assert (p.grad is not None) == p.requires_grad == (not n.startswith("pool.")), n
    optimised = {id(p) for g in param_groups(model, 0.05) for p in g["params"]}
    assert optimised and not optimised & target_params
    # Checkpoints hold the target encoder (it is part of the module's state).
    assert any(k.startswith("target_encoder.") for k in model.state_dict())
    assert model.export_model() is model.target_encoder and model.export_prefix() == "target_encoder."
    mae = _model("mae")
    assert mae.export_model() is mae.model and mae.export_prefix() == "model."
    # train() keeps the target encoder in eval mode.
    model.train()
    assert model.model.training and not model.target_encoder.training


def test_jepa_ema_update_and_momentum_schedule():
    model = _model("jepa")
    before = {n: p.detach().clone() for n, p in model.target_encoder.named_parameters()}
    online = {n: p.detach().clone() for n, p in model.model.named_parameters()}
    model.update_target(0.9)
    for n, p in model.target_encoder.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[n] + 0.1 * online[n])
    model.update_target(1.0)
    for n, p in model.target_encoder.named_parameters():
        torch.testing.assert_close(p, 0.9 * before[n] + 0.1 * online[n])
    model.update_target(0.0)
    for n, p in model.target_encoder.named_parameters():
        assert torch.equal(p, online[n])
    assert model.momentum(0, 1000) == pytest.approx(0.996)
    assert model.momentum(500, 1000) == pytest.approx(0.998)
    assert model.momentum(1000, 1000) == pytest.approx(1.0)
    assert model.momentum(5000, 1000) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        model.update_target(1.5)


def test_objectives_check_their_input():
    x = torch.randn(3, 16, 16)
    import mmvit

    with pytest.raises(ValueError, match="pack_masked"):
        _model("mae")(mmvit.pack([x], patch_size=PS, seq_len=4))
    b = pack_masked([torch.randn(3, 4, 16, 16)], [torch.tensor([1])], patch_size=(4, 8, 8), seq_len=4,
                    full_seq_len=4)
    with pytest.raises(ValueError, match="patch size"):
        _model("mae")(b)
    with pytest.raises(ValueError, match="num_classes"):
        _build("mae", {"encoder": {**_cfg()["encoder"], "num_classes": 10}})
    with pytest.raises(KeyError, match="decoder"):
        _build("mae", {"encoder": _cfg()["encoder"], "decodr": {}})
