"""CSWin Transformer: registry, shapes, parameter counts, official key names, attention windows."""

from __future__ import annotations

import math

import pytest
import timm
import torch
import torch.nn.functional as F

import model  # noqa: F401  (registers the variants)
from model.cswin import CSWinTransformer, LePEAttention, load_pretrained, stage_resolutions

VARIANTS = ["cswin_nano_64", "cswin_tiny_224", "cswin_small_224", "cswin_base_224",
            "cswin_large_224"]

# Published parameter counts with a 1000-class head (Dong et al. 2022, Table 1).
PUBLISHED_PARAMS = {"cswin_tiny_224": 22.3e6, "cswin_small_224": 34.6e6,
                    "cswin_base_224": 77.4e6, "cswin_large_224": 173.3e6}


def test_every_variant_is_registered() -> None:
    assert sorted(timm.list_models("cswin_*")) == sorted(VARIANTS)


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_backward_small_input(name: str) -> None:
    torch.manual_seed(0)
    kwargs = {} if name == "cswin_nano_64" else {"img_size": 64, "split_size": (1, 2, 4, 4)}
    net = timm.create_model(name, num_classes=12, **kwargs)
    x = torch.randn(2, 3, 64, 64, requires_grad=True)
    out = net(x)
    assert out.shape == (2, 12)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    # Every block contributes: the first stage's LePE conv and qkv receive a gradient.
    assert grads["stage1.0.attns.0.get_v.weight"].abs().sum() > 0
    assert grads["stage1.0.qkv.weight"].abs().sum() > 0
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMS))
def test_parameter_counts_match_paper(name: str) -> None:
    with torch.device("meta"):
        net = timm.create_model(name)
    count = sum(p.numel() for p in net.parameters())
    assert count == pytest.approx(PUBLISHED_PARAMS[name], rel=0.01)


def test_create_model_with_num_classes_12() -> None:
    with torch.device("meta"):
        net = timm.create_model("cswin_tiny_224", num_classes=12)
    assert net.head.weight.shape == (12, 512)
    assert net.pretrained_cfg["first_conv"] == "stage1_conv_embed.0"


def expected_cswin_t_keys() -> dict[str, tuple[int, ...]]:
    """Names and shapes of the official CSWin-T (1000 classes) state dict, from the architecture."""
    dims, depths = (64, 128, 256, 512), (1, 2, 21, 1)
    keys: dict[str, tuple[int, ...]] = {
        "stage1_conv_embed.0.weight": (64, 3, 7, 7), "stage1_conv_embed.0.bias": (64,),
        "stage1_conv_embed.2.weight": (64,), "stage1_conv_embed.2.bias": (64,)}
    for s, (dim, depth) in enumerate(zip(dims, depths, strict=True), start=1):
        branches = 1 if s == 4 else 2
        for b in range(depth):
            p = f"stage{s}.{b}."
            keys |= {p + "qkv.weight": (3 * dim, dim), p + "qkv.bias": (3 * dim,),
                     p + "norm1.weight": (dim,), p + "norm1.bias": (dim,),
                     p + "proj.weight": (dim, dim), p + "proj.bias": (dim,),
                     p + "norm2.weight": (dim,), p + "norm2.bias": (dim,),
                     p + "mlp.fc1.weight": (4 * dim, dim), p + "mlp.fc1.bias": (4 * dim,),
                     p + "mlp.fc2.weight": (dim, 4 * dim), p + "mlp.fc2.bias": (dim,)}
            for a in range(branches):
                d = dim // branches
                keys |= {p + f"attns.{a}.get_v.weight": (d, 1, 3, 3), p + f"attns.{a}.get_v.bias": (d,)}
        if s < 4:
            keys |= {f"merge{s}.conv.weight": (2 * dim, dim, 3, 3), f"merge{s}.conv.bias": (2 * dim,),
                     f"merge{s}.norm.weight": (2 * dim,), f"merge{s}.norm.bias": (2 * dim,)}
    keys |= {"norm.weight": (512,), "norm.bias": (512,), "head.weight": (1000, 512),
             "head.bias": (1000,)}
    return keys


@pytest.fixture(scope="module")
def official_t_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, dict]:
    """An official-format checkpoint file: random tensors under the expected names."""
    gen = torch.Generator().manual_seed(1)
    state = {k: torch.randn(shape, generator=gen) * 0.02 for k, shape in expected_cswin_t_keys().items()}
    path = tmp_path_factory.mktemp("ckpt") / "cswin_tiny_224.pth"
    torch.save({"state_dict_ema": state, "epoch": 299}, path)
    return str(path), state


def test_cswin_t_state_dict_matches_official_names(official_t_checkpoint: tuple[str, dict]) -> None:
    _, state = official_t_checkpoint
    net = timm.create_model("cswin_tiny_224")
    own = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert own == {k: tuple(v.shape) for k, v in state.items()}
    net.load_state_dict(state, strict=True)
    assert torch.equal(net.stage1[0].attns[0].get_v.weight, state["stage1.0.attns.0.get_v.weight"])


def test_load_pretrained_replaces_head(official_t_checkpoint: tuple[str, dict]) -> None:
    path, state = official_t_checkpoint
    torch.manual_seed(0)
    net = load_pretrained(timm.create_model("cswin_tiny_224", num_classes=12), path)
    assert torch.equal(net.merge1.conv.weight, state["merge1.conv.weight"])
    assert torch.equal(net.stage3[20].mlp.fc2.bias, state["stage3.20.mlp.fc2.bias"])
    assert net.head.weight.shape == (12, 512)
    # timm's own local-file route reads the same file (EMA weights, head adapted).
    via_timm = timm.create_model("cswin_tiny_224", num_classes=12, pretrained=True,
                                 pretrained_cfg_overlay={"file": path})
    assert torch.equal(via_timm.norm.weight, state["norm.weight"])


def test_load_pretrained_rejects_wrong_variant(official_t_checkpoint: tuple[str, dict]) -> None:
    path, _ = official_t_checkpoint
    with pytest.raises((ValueError, RuntimeError)):
        load_pretrained(timm.create_model("cswin_nano_64", num_classes=12), path)


def test_stage_resolutions_and_size_check() -> None:
    assert stage_resolutions(224) == [(56, 56), (28, 28), (14, 14), (7, 7)]
    assert stage_resolutions(64) == [(16, 16), (8, 8), (4, 4), (2, 2)]
    with pytest.raises(ValueError, match="stage 3: 4x4 tokens, split_size 7"):
        CSWinTransformer(img_size=64)
    net = CSWinTransformer(img_size=64, embed_dim=16, depth=(1, 1, 1, 1), split_size=(1, 2, 2, 2),
                           num_classes=3)
    assert net(torch.randn(1, 3, 128, 96)).shape == (1, 3)  # non-square, still divisible
    with pytest.raises(ValueError, match="not divisible by split_size"):
        net(torch.randn(1, 3, 72, 72))  # stage-2 grid 9x9 vs split 2


def naive_stripe_attention(attn: LePEAttention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                           h: int, w: int) -> torch.Tensor:
    """Reference: loop over every stripe, attend within it, add the LePE of the stripe's V."""
    b, n, c = q.shape
    heads, d = attn.num_heads, c // attn.num_heads
    grid = [t.reshape(b, h, w, c) for t in (q, k, v)]  # (B, H, W, C)
    out = torch.zeros(b, h, w, c)
    s = attn.split_size
    if attn.orientation == "full":
        boxes = [(slice(0, h), slice(0, w))]
    elif attn.orientation == "vertical":
        boxes = [(slice(0, h), slice(x, x + s)) for x in range(0, w, s)]
    else:
        boxes = [(slice(y, y + s), slice(0, w)) for y in range(0, h, s)]
    for rows, cols in boxes:
        qs, ks, vs = (g[:, rows, cols, :] for g in grid)  # (B, hs, ws, C)
        hs, ws = qs.shape[1], qs.shape[2]
        lepe = attn.get_v(vs.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)  # (B, hs, ws, C)
        for head in range(heads):
            ch = slice(head * d, (head + 1) * d)
            qh, kh, vh = (t[..., ch].reshape(b, hs * ws, d) for t in (qs, ks, vs))
            weights = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(d), dim=-1)
            res = (weights @ vh).reshape(b, hs, ws, d) + lepe[..., ch]
            out[:, rows, cols, ch] = res
    return out.reshape(b, n, c)


@pytest.mark.parametrize("orientation", ["vertical", "horizontal", "full"])
def test_stripe_attention_matches_naive_reference(orientation: str) -> None:
    torch.manual_seed(0)
    h, w, c = 6, 4, 8
    attn = LePEAttention(c, num_heads=2, split_size=2, orientation=orientation).eval()
    q, k, v = (torch.randn(2, h * w, c) for _ in range(3))
    got = attn(q, k, v, (h, w))
    want = naive_stripe_attention(attn, q, k, v, h, w)
    assert torch.allclose(got, want, atol=1e-5)


def test_first_branch_is_vertical_like_official_attns0() -> None:
    """Official ``attns.0`` uses windows of full height and ``split_size`` columns."""
    torch.manual_seed(0)
    net = CSWinTransformer(img_size=64, embed_dim=16, depth=(1, 1, 1, 1), split_size=(2, 2, 2, 2))
    assert [a.orientation for a in net.stage1[0].attns] == ["vertical", "horizontal"]
    assert net.stage1[0].attns[0].window(16, 16) == (16, 2)
    assert [a.orientation for a in net.stage4[0].attns] == ["full"]


def test_lepe_is_added_to_attention() -> None:
    """With q = k = 0 attention is a plain mean over the window; the rest must be the LePE conv."""
    torch.manual_seed(0)
    attn = LePEAttention(4, num_heads=1, split_size=2, orientation="full")
    v = torch.randn(1, 9, 4)
    zeros = torch.zeros_like(v)
    got = attn(zeros, zeros, v, (3, 3))
    lepe = attn.get_v(v.transpose(1, 2).reshape(1, 4, 3, 3)).flatten(2).transpose(1, 2)
    assert torch.allclose(got, v.mean(1, keepdim=True) + lepe, atol=1e-6)
    assert not torch.allclose(got, F.scaled_dot_product_attention(zeros, zeros, v), atol=1e-3)
