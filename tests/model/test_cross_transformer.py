"""Cross-transformer pieces (model/cross_transformer.py): P2VANet Eq. 6-12."""

import math

import pytest
import torch
import torch.nn.functional as F

from model.cross_transformer import (
    AttributeTokenizer,
    CrossAttention,
    CrossTransformer,
    SwitchNorm1d,
)


def _force(sn, mean_w, var_w):
    with torch.no_grad():
        sn.mean_weight.copy_(torch.tensor(mean_w))
        sn.var_weight.copy_(torch.tensor(var_w))


def test_switchnorm_layer_norm_only():
    x = torch.randn(6, 5)
    sn = SwitchNorm1d(5)
    _force(sn, [50.0, -50.0], [50.0, -50.0])  # softmax -> all weight on LN
    torch.testing.assert_close(sn(x), F.layer_norm(x, (5,)), atol=1e-5, rtol=1e-4)


def test_switchnorm_batch_norm_only_and_running_stats():
    x = torch.randn(8, 5) * 3 + 2
    sn = SwitchNorm1d(5, momentum=1.0)
    _force(sn, [-50.0, 50.0], [-50.0, 50.0])  # all weight on BN
    ref = F.batch_norm(x, None, None, training=True)
    torch.testing.assert_close(sn(x), ref, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(sn.running_mean, x.mean(0))  # momentum 1: the last batch
    sn.eval()
    torch.testing.assert_close(sn(x), ref, atol=1e-5, rtol=1e-4)  # eval: running stats
    assert not torch.equal(sn(x[:2]), F.batch_norm(x[:2], None, None, training=True))


def test_switchnorm_default_mixes_equally():
    x = torch.randn(8, 5)
    sn = SwitchNorm1d(5)
    mean = 0.5 * x.mean(1, keepdim=True) + 0.5 * x.mean(0, keepdim=True)
    var = 0.5 * x.var(1, unbiased=False, keepdim=True) + 0.5 * x.var(0, unbiased=False,
                                                                      keepdim=True)
    torch.testing.assert_close(sn(x), (x - mean) / torch.sqrt(var + 1e-5))


def test_tokenizer_maps_each_chunk_separately():
    tok = AttributeTokenizer(n_attr=6, n_tokens=3, dim=4)
    p = torch.randn(2, 6)
    tokens = tok(p)
    assert tokens.shape == (2, 3, 4)
    torch.testing.assert_close(tokens[:, 1], p[:, 2:4] @ tok.weight[1] + tok.bias[1])
    with pytest.raises(ValueError, match="equal tokens"):
        AttributeTokenizer(n_attr=384, n_tokens=5, dim=4)


def test_balanced_tokens_average_to_unit_variance_and_glorot_ones_do_not():
    torch.manual_seed(0)
    p = torch.randn(4096, 384)
    for init, low, high in (("balanced", 0.7, 1.3), ("glorot", 0.0, 0.02)):
        tok = AttributeTokenizer(n_attr=384, n_tokens=32, dim=128, init=init)
        with torch.no_grad():
            mean_token = tok(p).mean(dim=1)  # (N, T, d) -> (N, d): uniform attention's output
        assert low < mean_token.var().item() < high, init
    with pytest.raises(ValueError, match="token init"):
        AttributeTokenizer(n_attr=6, n_tokens=3, dim=4, init="kaiming")


@pytest.mark.parametrize(("init", "low", "high"), [("balanced", 0.25, 0.75), ("glorot", 0.0, 0.02)])
def test_share_of_the_attributes_in_the_output_at_initialisation(init, low, high):
    """With balanced tokens the attributes start with a sizeable share of ZP's variance (as in
    concat); Glorot tokens leave them under 2 % (docs/model.md)."""
    torch.manual_seed(0)
    ct = CrossTransformer(dim=128, n_attr=384, n_tokens=32, num_heads=4, token_init=init)
    z, other_z = torch.randn(1024, 128), torch.randn(1024, 128)
    p, other_p = torch.randn(1024, 384), torch.randn(1024, 384)
    with torch.no_grad():
        out = ct(z, p)
        from_p = (out - ct(z, other_p)).var()  # changing only the attributes
        from_z = (out - ct(other_z, p)).var()  # changing only the hidden variable
    assert low < (from_p / (from_p + from_z)).item() < high


def test_cross_attention_is_eq9_eq10():
    torch.manual_seed(0)
    ca = CrossAttention(dim=8, n_attr=6, n_tokens=3, num_heads=2)
    z, p = torch.randn(4, 8), torch.randn(4, 6)
    tokens = ca.tokenizer(p)  # (4, 3, 8)
    q = ca.q(z)  # (4, 8)
    k, v = ca.kv(tokens).split(8, dim=-1)  # (4, 3, 8) each
    heads = []
    for h in range(2):  # Eq. 9 per head: softmax(q k^T / sqrt(d/h)) v
        sl = slice(4 * h, 4 * h + 4)
        att = torch.softmax((q[:, None, sl] @ k[..., sl].transpose(1, 2)) / math.sqrt(8 / 2), -1)
        heads.append((att @ v[..., sl])[:, 0])
    z_sa = torch.cat(heads, dim=-1)
    torch.testing.assert_close(ca.attend(z, p), z_sa, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ca(z, p), ca.proj(z_sa + z), atol=1e-5, rtol=1e-4)  # Eq. 10


def test_cross_transformer_eq6_to_12():
    torch.manual_seed(0)
    ct = CrossTransformer(dim=8, n_attr=6, n_tokens=3, num_heads=2)
    z, p = torch.randn(5, 8), torch.randn(5, 6)
    ct.eval()  # SwitchNorm uses its running statistics: both passes see the same normalisation
    z_ca = ct.ca1(ct.norm_z(z), ct.norm_p(p))
    z_ca2 = ct.ca2(z_ca, p) + z
    expected = ct.proj(ct.ffn(ct.norm(z_ca2)) + z_ca2)
    torch.testing.assert_close(ct(z, p), expected)
    other = p.clone()
    other[:, 0] += 5.0
    assert not torch.allclose(ct(z, other), ct(z, p))  # the attributes reach the output
