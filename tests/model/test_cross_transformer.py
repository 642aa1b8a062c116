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
