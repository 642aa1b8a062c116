"""Private-attribute embedding variants (model/private.py): P2VANet Table VI."""

import pytest
import torch

from model.cross_transformer import CrossTransformer
from model.private import AttentionFusion, ConcatFusion, build_private


@pytest.mark.parametrize("kind,cls", [("concat", ConcatFusion), ("attention", AttentionFusion),
                                      ("cross_transformer", CrossTransformer)])
def test_build_private_variants(kind, cls):
    torch.manual_seed(0)
    module = build_private(kind, dim=8, n_attr=12, n_tokens=4, num_heads=2)
    assert isinstance(module, cls)
    z, p = torch.randn(3, 8), torch.randn(3, 12)
    out = module(z, p)
    assert out.shape == (3, 8)
    p2 = p.clone()
    p2[:, 5] += 3.0
    assert not torch.allclose(module(z, p2), out)  # the attributes change the embedding


def test_build_private_none_and_unknown():
    assert build_private("none", 8, 12, 4) is None
    with pytest.raises(ValueError, match="model.private"):
        build_private("film", 8, 12, 4)


def test_concat_is_a_linear_map_of_the_concatenation():
    fusion = ConcatFusion(dim=2, n_attr=1)
    with torch.no_grad():
        fusion.proj.weight.copy_(torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, -1.0]]))
        fusion.proj.bias.zero_()
    assert fusion(torch.tensor([[1.0, 2.0]]), torch.tensor([[3.0]])).tolist() == [[7.0, -1.0]]
