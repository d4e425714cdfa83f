"""Frozen-feature probes: attentive probe isolation and reference, linear probe, kNN against brute force."""

import math

import pytest
import torch

import mmvit
from mmvit.pretrain import AttentiveProbe, LinearProbe, knn_predict, mean_features
from tests.conftest import tiny_model


def _samples(gen):
    return [torch.randn(3, 8 * int(torch.randint(1, 4, (), generator=gen)),
                        8 * int(torch.randint(1, 4, (), generator=gen)), generator=gen) for _ in range(6)] + \
           [torch.randn(3, 2, 16, 8, generator=gen), torch.randn(3, 3, 8, 24, generator=gen)]


def _frozen_tokens(encoder, batch):
    with torch.no_grad():
        return encoder.forward_tokens(batch)


def _ref_block(block, x):
    """One example's tokens ``[n, D]`` through a probe block, its self-attention written out."""
    attn = block.attn
    h, d = attn.heads, attn.head_dim
    q, k, v = attn.qkv(block.norm1(x)).view(len(x), 3, h, d).unbind(1)      # [n, H, d]
    w = torch.softmax(torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d), dim=-1)
    x = x + attn.proj(torch.einsum("hqk,khd->qhd", w, v).reshape(len(x), -1))
    return x + block.mlp(block.norm2(x))


def _ref_probe(probe, x):
    """One example's tokens ``[n, D]`` alone, the attention written out."""
    for block in probe.blocks:
        x = _ref_block(block, x)
    h, d = probe.heads, probe.head_dim
    q = probe.q(probe.query).view(h, d)
    k, v = probe.kv(probe.norm1(x)).view(len(x), 2, h, d).unbind(1)
    w = torch.softmax(torch.einsum("hd,nhd->hn", q, k) / math.sqrt(d), dim=-1)
    out = probe.query + probe.proj(torch.einsum("hn,nhd->hd", w, v).reshape(-1))
    return probe.head(out + probe.mlp(probe.norm2(out)))


@pytest.mark.parametrize("depth", [1, 3])
def test_attentive_probe_isolation_and_reference(depth):
    encoder = tiny_model(num_classes=0).eval()
    torch.manual_seed(depth)
    probe = AttentiveProbe(32, 7, heads=4, depth=depth)
    assert len(probe.blocks) == depth - 1
    gen = torch.Generator().manual_seed(0)
    samples = _samples(gen)
    target = torch.randn(3, 24, 16, generator=gen)

    def run(batch_samples, index, seq_len):
        batch = mmvit.pack(batch_samples, patch_size=8, seq_len=seq_len)
        e = batch.example_ids.tolist().index(index)
        logits = probe(_frozen_tokens(encoder, batch), batch)
        assert logits.shape == (len(batch_samples), 7)
        probe.zero_grad()
        logits[e].square().sum().backward()
        return logits[e].detach(), {n: p.grad.clone() for n, p in probe.named_parameters()}, batch, e

    alone = run([target], 0, 6)
    batch = alone[2]
    ref = _ref_probe(probe, _frozen_tokens(encoder, batch)[batch.segment_ids == 1])
    torch.testing.assert_close(alone[0], ref.detach(), rtol=1e-5, atol=1e-5)
    for pos, seq_len in [(0, 12), (4, 16), (len(samples), 24)]:
        packed = run(samples[:pos] + [target] + samples[pos:], pos, seq_len)
        torch.testing.assert_close(packed[0], alone[0], rtol=1e-5, atol=1e-5)
        for n, g in alone[1].items():
            torch.testing.assert_close(packed[1][n], g, rtol=1e-4, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_mean_features_and_linear_probe():
    encoder = tiny_model(num_classes=0).eval()
    gen = torch.Generator().manual_seed(1)
    samples = _samples(gen)
    batch = mmvit.pack(samples, patch_size=8, seq_len=16)
    tokens = _frozen_tokens(encoder, batch)
    feats = mean_features(tokens, batch)
    for e in range(batch.num_examples):
        torch.testing.assert_close(feats[e], tokens[batch.segment_ids == e + 1].mean(0))
    probe = LinearProbe(32, 5).train()
    logits = probe(feats)
    # Training mode: BatchNorm without affine, biased batch variance, eps 1e-6, then the linear layer.
    normed = (feats - feats.mean(0)) / torch.sqrt(feats.var(0, unbiased=False) + 1e-6)
    torch.testing.assert_close(logits, normed @ probe.head.weight.T + probe.head.bias, rtol=1e-5, atol=1e-5)
    plain = LinearProbe(32, 5, norm="none")
    torch.testing.assert_close(plain(feats), feats @ plain.head.weight.T + plain.head.bias)
    with pytest.raises(ValueError):
        LinearProbe(32, 5, norm="layer")


def test_knn_matches_a_brute_force_loop():
    gen = torch.Generator().manual_seed(2)
    train, test = torch.randn(60, 16, generator=gen), torch.randn(13, 16, generator=gen)
    labels = torch.randint(0, 4, (60,), generator=gen)
    k, temp = 20, 0.07
    scores = knn_predict(train, labels, test, num_classes=4, k=k, temperature=temp, chunk_size=5)
    for i in range(len(test)):
        sims = []
        for j in range(len(train)):
            a, b = test[i].tolist(), train[j].tolist()
            dot = sum(x * y for x, y in zip(a, b))
            sims.append((dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b)), j))
        votes = [0.0] * 4
        for s, j in sorted(sims, reverse=True)[:k]:
            votes[int(labels[j])] += math.exp(s / temp)
        assert scores[i].tolist() == pytest.approx(votes, rel=1e-4)
    # The nearest neighbour of a training point is itself: k=1 recovers its label.
    assert torch.equal(knn_predict(train, labels, train, 4, k=1).argmax(1), labels)
    with pytest.raises(ValueError, match="k="):
        knn_predict(train, labels, test, 4, k=61)
    with pytest.raises(ValueError, match="labels"):
        knn_predict(train, labels + 4, test, 4)


def test_last_blocks_tokens_are_each_blocks_output_after_the_final_norm():
    """forward_tokens(last_blocks=k): slice j is what a copy of the model cut after that block returns."""
    import copy

    model = tiny_model(num_classes=0, depth=3).eval()
    gen = torch.Generator().manual_seed(1)
    batch = mmvit.pack(_samples(gen), patch_size=8, seq_len=64)
    d = 32
    with torch.no_grad():
        three = model.forward_tokens(batch, last_blocks=3)
        assert three.shape == (*batch.segment_ids.shape, 3 * d)
        torch.testing.assert_close(three[..., -d:], model.forward_tokens(batch), rtol=0, atol=0)
        for j in range(3):
            cut = copy.deepcopy(model)
            cut.blocks = cut.blocks[: j + 1]
            torch.testing.assert_close(three[..., j * d:(j + 1) * d], cut.forward_tokens(batch))
        torch.testing.assert_close(model.forward_tokens(batch, last_blocks=2), three[..., d:])
        assert not three[batch.segment_ids == 0].any()   # padding stays zero
    with pytest.raises(ValueError, match="3 blocks"):
        model.forward_tokens(batch, last_blocks=4)
