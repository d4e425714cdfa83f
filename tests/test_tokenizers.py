import pytest
import torch
import torch.nn.functional as F

import mmvit
from mmvit.ops.resize import inflate_kernel, pi_resize, resample_grid
from tests.conftest import tiny_model


def test_pi_resize_upsampling_preserves_embedding():
    """FlexiViT: resizing each patch and the kernel together leaves <x, w> unchanged (exact when upsampling)."""
    w = torch.randn(6, 3, 8, 8, dtype=torch.float64)
    x = torch.randn(10, 3, 8, 8, dtype=torch.float64)
    for size in [(8, 8), (12, 12), (16, 16), (16, 24)]:
        xr = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        wr = pi_resize(w, size)
        ref = x.flatten(1) @ w.flatten(1).T
        torch.testing.assert_close(xr.flatten(1) @ wr.flatten(1).T, ref, rtol=1e-8, atol=1e-8)


def test_pi_resize_downsampling_is_least_squares():
    w = torch.randn(4, 1, 16, 16, dtype=torch.float64)
    wr = pi_resize(w, (8, 8))
    x = torch.randn(200, 1, 16, 16, dtype=torch.float64)
    xr = F.interpolate(x, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    err_pi = ((xr.flatten(1) @ wr.flatten(1).T) - x.flatten(1) @ w.flatten(1).T).norm()
    naive = F.interpolate(w, size=(8, 8), mode="bilinear", align_corners=False, antialias=True)
    err_naive = ((xr.flatten(1) @ naive.flatten(1).T) - x.flatten(1) @ w.flatten(1).T).norm()
    assert err_pi < err_naive


def test_model_runs_at_any_patch_size():
    model = tiny_model().eval()
    img = torch.randn(3, 48, 32)
    for p in (4, 8, 16):
        out = model(mmvit.pack([img], patch_size=p, seq_len=(48 // p) * (32 // p)))
        assert out.shape == (1, 5) and torch.isfinite(out).all()


def test_inflate_formulas():
    k = torch.randn(5, 3, 4, 4)
    inf = inflate_kernel(k, 3, "inflate")
    assert torch.allclose(inf.sum(2), k) and torch.allclose(inf[:, :, 0], k / 3)
    cf = inflate_kernel(k, 4, "central_frame")
    assert torch.equal(cf[:, :, 2], k) and cf[:, :, [0, 1, 3]].abs().sum() == 0


@pytest.mark.parametrize("tok", [{"type": "central_frame", "frames": 4}, {"type": "tubelet", "frames": 3,
                                                                           "init": "inflate"}])
def test_tubelet_from_2d_equals_image_model_on_images(tok):
    m2d = tiny_model().eval()
    m3d = tiny_model(tokenizer=tok).eval()
    state = {k: v for k, v in m2d.state_dict().items() if not k.startswith("tokenizer")}
    m3d.load_state_dict(state, strict=False)
    m3d.tokenizer.load_2d(m2d.tokenizer.weight[:, :, 0], m2d.tokenizer.bias)
    imgs = [torch.randn(3, 24, 16), torch.randn(3, 8, 32)]
    t = tok["frames"]
    ref = m2d(mmvit.pack(imgs, patch_size=8, seq_len=8))
    out = m3d(mmvit.pack(imgs, patch_size=(t, 8, 8), seq_len=8))  # images repeated to t frames
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # ...and a video of identical frames too.
    vids = [i.unsqueeze(1).expand(-1, t, -1, -1) for i in imgs]
    torch.testing.assert_close(m3d(mmvit.pack(vids, patch_size=(t, 8, 8), seq_len=8)), ref, rtol=1e-5, atol=1e-5)


def test_patch2d_tokenizes_videos_frame_by_frame():
    model = tiny_model().eval()
    video = torch.randn(3, 3, 16, 16)
    b = mmvit.pack([video], patch_size=8, seq_len=12)
    assert b.grid[0].tolist() == [3, 2, 2] and b.coords[0, :, 0].tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert model(b).shape == (1, 5)
    with pytest.raises(ValueError, match="pt=2"):
        model(mmvit.pack([video], patch_size=(2, 8, 8), seq_len=12))


def test_resample_grid_identity_and_constant():
    g = torch.randn(5, 7, 3)
    assert torch.equal(resample_grid(g, (5, 7)), g)
    const = torch.ones(4, 4, 2) * 3
    torch.testing.assert_close(resample_grid(const, (9, 2)), torch.ones(9, 2, 2) * 3)


def test_fractional_learned_embedding_is_resolution_invariant_at_corners():
    from mmvit.models.pos_embed import LearnedFactorized

    pe = LearnedFactorized(8, max_len=(4, 16, 16), fractional=True)
    c_small = torch.tensor([[0, 0, 0], [0, 1, 1]])
    c_big = torch.tensor([[0, 0, 0], [0, 4, 4]])
    a = pe(c_small, torch.tensor([[1, 2, 2]] * 2), None, None)
    b = pe(c_big, torch.tensor([[1, 8, 8]] * 2), None, None)
    torch.testing.assert_close(a, b)  # the centre of a 2x2 grid and of an 8x8 grid share embeddings


def test_learned_absolute_embedding_out_of_range_is_clear():
    model = tiny_model(pos_embed={"type": "learned", "max_len": [2, 4, 4]})
    with pytest.raises(ValueError, match="max_len"):
        model(mmvit.pack([torch.randn(3, 40, 8)], patch_size=8, seq_len=5))
