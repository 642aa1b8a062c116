"""AVMatchNet (model/avnet.py): every ablation switch, loss wiring, min-max steps, optimiser
coverage, scores, config and the timm registry. Tiny input sizes keep it fast."""

import dataclasses
import math

import numpy as np
import pytest
import timm
import torch
from torch import nn

from model.avnet import (
    AML_WEIGHTS,
    AVMatchNet,
    InputDims,
    LearningRates,
    LossWeights,
    ModelConfig,
    build_model,
    view_mean,
)
from model.losses import cross_modal_nce_loss
from model.xattr import identity_targets
from pipeline.common.config import ConfigError, build

DIMS = InputDims(n_bins=32, frames=24, face_size=16, n_audio_attr=24, n_face_attr=12,
                 n_gender=2, n_nation=3, n_identity=5)
TINY = dict(embed_dim=16, audio_channels=[4, 4, 4, 4, 4], face_channels=[4, 4, 4, 4, 4],
            audio_strides=[[2, 2], [2, 2], [1, 1], [1, 1], [1, 1]],
            face_strides=[[2, 2], [1, 1], [1, 1], [1, 1], [1, 1]], pool_size=[3, 3],
            generator_hidden=[16], head_hidden=[16], retrieval_hidden=[8], vae_hidden=[16],
            audio_attr_tokens=4, face_attr_tokens=12, ct_heads=2, match_ks=[2, 3], disc_steps=2,
            identity_weight=0.0, nce_weight=0.0)  # the two terms beyond Eq. 18: tested one by one

SWITCHES = {
    "adversarial": ["none", "gan", "lsgan", "wgan"],
    "metric": ["none", "lifted", "triplet", "ranked_list"],
    "vae": ["none", "audio", "visual", "both"],
    "private": ["none", "concat", "attention", "cross_transformer"],
    "public": ["none", "gender", "nation", "both"],
    "shared_generator": [False, True],
    "generator_adv": ["negate", "flip"],
    "loss_weighting": ["p2vanet", "aml"],
    "normalize_embedding": [False, True],
    "branch_norm": ["batch", "layer", "none"],
    "generator_norm": ["none", "batch"],
    "vae_downstream": ["sample", "mean"],
    "public_reduction": ["sum", "mean"],
    "token_init": ["balanced", "glorot"],
    "metric_negatives": ["tuple", "batch"],
    "identity_weight": [0.0, 1.0],
    "nce_weight": [0.0, 1.0],
    "xattr_weight": [0.0, 1.0],
}
SETTINGS = [(k, v) for k, values in SWITCHES.items() for v in values]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors gain nothing from intra-op threads; on a busy 2-core machine they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_cfg(**overrides) -> ModelConfig:
    return build(ModelConfig, {**TINY, **overrides})


def tiny_model(**overrides) -> AVMatchNet:
    torch.manual_seed(0)
    return AVMatchNet(tiny_cfg(**overrides), DIMS)


def make_batch(direction="v2f", b=3, k=2, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    n_v, n_f = (1, k) if direction == "v2f" else (k, 1)

    def ints(high, n):
        return torch.randint(0, high, (b, n), generator=g)

    return {"direction": direction,
            "voice": torch.randn(b, n_v, 1, DIMS.n_bins, DIMS.frames, generator=g),
            "voice_attr": torch.randn(b, n_v, DIMS.n_audio_attr, generator=g),
            "face": torch.rand(b, n_f, 3, DIMS.face_size, DIMS.face_size, generator=g) * 2 - 1,
            "face_attr": torch.rand(b, n_f, DIMS.n_face_attr, generator=g),
            "voice_identity": ints(5, n_v), "face_identity": ints(5, n_f),
            "voice_gender": ints(2, n_v), "face_gender": ints(2, n_f),
            "voice_nation": ints(3, n_v), "face_nation": ints(3, n_f),
            "label": torch.randint(0, k, (b,), generator=g)}


def set_random_xattr_targets(model: AVMatchNet, seed: int = 0) -> dict:
    """Targets for ``model.xattr`` from random attributes of 10 items over the 5 identities."""
    rng = np.random.default_rng(seed)
    attr = {"voice": rng.normal(size=(10, DIMS.n_audio_attr)), "face": rng.random((10, DIMS.n_face_attr))}
    identity = {m: np.arange(10) % 5 for m in attr}
    model.xattr.set_targets(attr, identity)
    return {"attr": attr, "identity": identity}


def grad_norm(module) -> float:
    return sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)


# -- forward and backward for every value of every switch ---------------------------------------
# each setting in one direction (alternating), the default model in both below
FB_CASES = [(k, v, ("v2f", "f2v")[i % 2]) for i, (k, v) in enumerate(SETTINGS)]
FB_CASES += [("private", "cross_transformer", "v2f"), ("vae", "both", "v2f")]


@pytest.mark.parametrize("switch,value,direction", FB_CASES,
                         ids=[f"{k}={v}-{d}" for k, v, d in FB_CASES])
def test_forward_backward_every_switch(switch, value, direction):
    model = tiny_model(**{switch: value})
    model.train()
    if model.xattr is not None:  # the trainer sets its targets from the train items
        set_random_xattr_targets(model)
    batch = make_batch(direction, k=2 if direction == "v2f" else 3)
    terms = model.generator_losses(batch, LossWeights())
    assert all(torch.isfinite(t) for t in terms.values()), terms
    terms["total"].backward()
    cfg = model.cfg
    assert ("metric" in terms) == (cfg.metric != "none")
    assert ("rec" in terms) == (cfg.vae != "none")
    assert ("gender" in terms) == (cfg.public in ("gender", "both"))
    assert ("nation" in terms) == (cfg.public in ("nation", "both"))
    assert ("dis" in terms and "adv" in terms) == (cfg.adversarial != "none")
    assert ("identity" in terms) == (cfg.identity_weight > 0)
    assert ("nce" in terms) == (cfg.nce_weight > 0)
    assert ("xattr" in terms) == (cfg.xattr_weight > 0)
    assert {"cls_match", "cls_verify", "cls_retrieve", "cls"} <= set(terms)
    for name in ("branches", "generators", "vaes", "private", "gender_head", "nation_head",
                 "identity_head", "xattr"):
        module = getattr(model, name)
        if module is not None and any(True for _ in module.parameters()):
            assert grad_norm(module) > 0, f"{name} received no gradient"
    if model.discriminator is not None:  # the generator side never trains the discriminator
        assert all(p.grad is None for p in model.discriminator.parameters())


def test_total_is_eq18_weighted_sum():
    model = tiny_model()
    w = LossWeights(lambda1=0.5, lambda2=3.0, lambda3=0.25, lambda4=4.0)
    terms = model.generator_losses(make_batch(), w)
    expected = (terms["metric"] + 0.5 * terms["rec"] + 3.0 * terms["cls"] + 0.25 * terms["gender"]
                + 4.0 * terms["nation"] + terms["adv"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert terms["cls"].item() == pytest.approx(
        (terms["cls_match"] + terms["cls_verify"] + terms["cls_retrieve"]).item(), rel=1e-6)
    assert terms["rec"].item() == pytest.approx((terms["rec_voice"] + terms["rec_face"]).item())


def test_identity_term_is_the_item_mean_cross_entropy_and_weighted():
    model = tiny_model(identity_weight=0.5)
    batch = make_batch("f2v", b=2, k=3)
    out = model.encode(batch)
    terms = model.generator_losses(batch, LossWeights(), out=out)
    ids = torch.cat([batch["voice_identity"], batch["face_identity"]], dim=1)  # (B, n)
    logits = model.identity_head(out.h_all).flatten(0, 1)  # (B, n, C) -> (B*n, C)
    ce = nn.functional.cross_entropy(logits, ids.flatten())  # (B, n) -> (B*n,)
    assert terms["identity"].item() == pytest.approx(ce.item(), rel=1e-5)
    coef = LossWeights().coefficients(model.cfg)
    expected = sum(coef[n] * terms[n] for n in ("metric", "rec", "cls", "gender", "nation"))
    assert terms["total"].item() == pytest.approx(
        (expected + 0.5 * terms["identity"] + terms["adv"]).item(), rel=1e-5)
    assert tiny_model().identity_head is None


def test_nce_term_is_weighted_into_the_total():
    model = tiny_model(nce_weight=0.5, nce_temperature=0.2)
    batch = make_batch("v2f", b=3, k=2)
    out = model.encode(batch)
    terms = model.generator_losses(batch, LossWeights(), out=out)
    expected_nce = cross_modal_nce_loss(out.query, out.candidates, batch["voice_identity"][:, 0],
                                        batch["face_identity"], 0.2)
    assert terms["nce"].item() == pytest.approx(expected_nce.item(), rel=1e-6)
    coef = LossWeights().coefficients(model.cfg)
    expected = sum(coef[n] * terms[n] for n in ("metric", "rec", "cls", "gender", "nation"))
    assert terms["total"].item() == pytest.approx(
        (expected + 0.5 * terms["nce"] + terms["adv"]).item(), rel=1e-5)
    assert "nce" not in tiny_model().generator_losses(batch)


def test_xattr_term_regresses_the_other_modalitys_identity_targets():
    model = tiny_model(xattr_weight=0.5)
    source = set_random_xattr_targets(model)
    attr, identity = source["attr"], source["identity"]
    batch = make_batch("v2f", b=3, k=2)
    out = model.encode(batch)
    terms = model.generator_losses(batch, LossWeights(), out=out)
    expected_x = 0.0
    for m, other in (("voice", "face"), ("face", "voice")):
        target, _ = identity_targets(attr[other], identity[other], 5)
        ids = batch[f"{m}_identity"].flatten()  # (B, n) -> (B*n,)
        pred = model.xattr.heads[m](out.items[m].h)
        expected_x += ((pred - torch.from_numpy(target).float()[ids]) ** 2).mean()
    assert terms["xattr"].item() == pytest.approx(float(expected_x), rel=1e-5)
    coef = LossWeights().coefficients(model.cfg)
    expected = sum(coef[n] * terms[n] for n in ("metric", "rec", "cls", "gender", "nation"))
    assert terms["total"].item() == pytest.approx(
        (expected + 0.5 * terms["xattr"] + terms["adv"]).item(), rel=1e-5)
    assert tiny_model().xattr is None


def test_batch_negatives_reach_other_tuples():
    """``metric_negatives: batch`` changes L_metric only through other tuples' candidates."""
    batch = make_batch("v2f", b=3, k=2)
    tuple_loss = tiny_model().eval().generator_losses(batch)["metric"]
    batch_loss = tiny_model(metric_negatives="batch").eval().generator_losses(batch)["metric"]
    assert batch_loss.item() > tuple_loss.item()
    one = {k: (v[:1] if torch.is_tensor(v) else v) for k, v in batch.items()}
    one["face_identity"] = torch.tensor([[0, 1]])
    one["voice_identity"] = torch.tensor([[one["label"].item()]])
    a = tiny_model().eval().generator_losses(one)["metric"]
    b = tiny_model(metric_negatives="batch").eval().generator_losses(one)["metric"]
    assert a.item() == pytest.approx(b.item(), rel=1e-6)  # one tuple: Eq. 5 exactly


def test_classification_losses_eq6_to_8():
    model = tiny_model()
    batch = make_batch("f2v", b=2, k=3)
    batch["label"] = torch.tensor([2, 0])
    out = model(batch)
    terms = model.classification_losses(out, batch["label"])
    logits = model.match_head(out.query, out.candidates)  # Eq. 6
    expected = -(torch.log_softmax(logits, -1)[0, 2] + torch.log_softmax(logits, -1)[1, 0]) / 2
    torch.testing.assert_close(terms["cls_match"], expected)
    voices, face = out.candidates, out.query  # f2v: the voices are the candidates
    pair = model.verify_head(voices, face[:, None].expand_as(voices))  # Eq. 7, (2, 3, 2)
    same = torch.tensor([[0, 0, 1], [1, 0, 0]])
    nll = -torch.log_softmax(pair, -1).gather(-1, same[..., None]).squeeze(-1)
    torch.testing.assert_close(terms["cls_verify"], nll.mean())
    dist = model.retrieval_head(voices, face[:, None])  # Eq. 8, distances (2, 3)
    expected = -(torch.log_softmax(-dist, -1)[0, 2] + torch.log_softmax(-dist, -1)[1, 0]) / 2
    torch.testing.assert_close(terms["cls_retrieve"], expected)


def test_total_under_aml_weighting():
    model = tiny_model(vae="none", private="none", public="none", loss_weighting="aml",
                       adv_weight=0.5)
    terms = model.generator_losses(make_batch(), LossWeights(beta=3.0, gamma=2.0))
    expected = 3.0 * terms["metric"] + 2.0 * terms["cls"] + 0.5 * terms["adv"]
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_everything_off_still_trains_heads():
    model = tiny_model(adversarial="none", metric="none", vae="none", private="none",
                       public="none")
    terms = model.generator_losses(make_batch())
    assert set(terms) == {"cls_match", "cls_verify", "cls_retrieve", "cls", "total"}
    terms["total"].backward()
    assert grad_norm(model.branches) > 0


# -- loss weights ---------------------------------------------------------------------------------
def test_loss_weights_from_top_level_params():
    params = {"lambda1": 1.0, "lambda2": 2, "lambda3": 0.5, "lambda4": 1.5,
              "model": {"aml_weights": "iv_g"}}
    w = LossWeights.from_params(params)
    assert (w.lambda1, w.lambda2, w.lambda3, w.lambda4) == (1.0, 2.0, 0.5, 1.5)
    assert (w.beta, w.gamma) == AML_WEIGHTS["iv_g"][1:] == (2.0, 3.0)
    assert LossWeights.from_params({}) == LossWeights()  # 1.5, 2, 1, 1.5 and {1, 3, 2}


def test_coefficients_follow_the_ambiguity_params():
    w = LossWeights()
    p2v = w.coefficients(ModelConfig())
    assert p2v == {"metric": 1.0, "cls": 2.0, "rec": 1.5, "gender": 1.0, "nation": 1.5}
    aml = w.coefficients(ModelConfig(loss_weighting="aml"))
    assert (aml["metric"], aml["cls"]) == (3.0, 2.0)
    literal = w.coefficients(ModelConfig(eq18_lambda4="gender"))
    assert (literal["gender"], literal["nation"]) == (2.5, 0.0)


def test_eq18_literal_reading_drops_nation_from_total():
    model = tiny_model(eq18_lambda4="gender", adversarial="none")
    terms = model.generator_losses(make_batch(), LossWeights())
    expected = (terms["metric"] + 1.5 * terms["rec"] + 2.0 * terms["cls"]
                + 2.5 * terms["gender"])
    assert terms["total"].item() == pytest.approx(expected.item(), rel=1e-5)


# -- adversarial min-max ---------------------------------------------------------------------------
def _dis_loss(model, batch):
    torch.manual_seed(1)  # the same VAE noise for every evaluation
    with torch.no_grad():
        return model.discriminator_loss(model(batch))[0].item()


@pytest.mark.parametrize("kind", ["gan", "lsgan", "wgan"])
@pytest.mark.parametrize("mode", ["negate", "flip"])
def test_discriminator_and_generator_steps_move_ldis_in_opposite_directions(kind, mode):
    model = tiny_model(adversarial=kind, generator_adv=mode, vae="none")
    model.eval()  # fixed BatchNorm statistics: only the parameters change between evaluations
    batch = make_batch(b=6)
    gen_groups, dis_groups = model.param_groups()
    d_opt = torch.optim.SGD([p for g in dis_groups for p in g["params"]], lr=0.05)
    g_opt = torch.optim.SGD([p for g in gen_groups for p in g["params"]], lr=0.05)

    before = _dis_loss(model, batch)
    model.discriminator_update(model(batch), d_opt, steps=1)
    after_d = _dis_loss(model, batch)
    assert after_d < before  # the discriminator step lowers L_dis

    dis_state = [p.detach().clone() for p in model.discriminator.parameters()]
    g_opt.zero_grad()
    model.generator_losses(batch)["adv"].backward()
    g_opt.step()
    after_g = _dis_loss(model, batch)
    assert after_g > after_d  # the generator step raises it
    assert all(torch.equal(a, p) for a, p in zip(dis_state, model.discriminator.parameters(),
                                                 strict=True))


def test_forward_with_weights_returns_losses_and_allows_algorithm1_order():
    """AML Algorithm 1: both losses from one forward, T discriminator steps, then the
    generator step backpropagates the loss computed before them."""
    model = tiny_model(adversarial="gan")
    batch = make_batch()
    torch.manual_seed(3)
    terms, out = model(batch, LossWeights())
    torch.manual_seed(3)
    reference = model.generator_losses(batch, LossWeights())
    assert set(terms) == set(reference)
    torch.testing.assert_close(terms["total"], reference["total"])
    d_opt = torch.optim.SGD(model.discriminator.parameters(), lr=0.5)
    model.discriminator_update(out, d_opt)  # in-place updates of the discriminator
    terms["total"].backward()  # still valid: the graph holds copies of its weights
    assert grad_norm(model.branches) > 0


def test_wgan_clipping_applied():
    model = tiny_model(adversarial="wgan", wgan_clip=0.01)
    assert max(p.abs().max().item() for p in model.discriminator.parameters()) <= 0.01
    with torch.no_grad():
        for p in model.discriminator.parameters():
            p.fill_(5.0)
    opt = torch.optim.SGD(model.discriminator.parameters(), lr=1.0)
    model.discriminator_update(model(make_batch()), opt, steps=3)
    values = torch.cat([p.detach().flatten() for p in model.discriminator.parameters()])
    assert values.abs().max().item() == pytest.approx(0.01)


def test_no_clipping_for_gan():
    model = tiny_model(adversarial="gan")
    with torch.no_grad():
        for p in model.discriminator.parameters():
            p.fill_(5.0)
    model.clip_discriminator()
    assert all((p == 5.0).all() for p in model.discriminator.parameters())


def test_discriminator_update_runs_disc_steps():
    model = tiny_model(adversarial="gan", disc_steps=3)
    opt = torch.optim.SGD(model.discriminator.parameters(), lr=0.1)
    calls = []
    model.discriminator.register_forward_hook(lambda *_: calls.append(1))
    loss, acc = model.discriminator_update(model(make_batch()), opt)
    assert len(calls) == 3 and 0.0 <= acc.item() <= 1.0 and loss.ndim == 0


def test_no_discriminator_when_adversarial_none():
    model = tiny_model(adversarial="none")
    assert model.discriminator is None
    with pytest.raises(RuntimeError, match="no discriminator"):
        model.discriminator_loss(make_batch())


# -- optimiser coverage ----------------------------------------------------------------------------
COVERAGE = SETTINGS + [("preset", "aml"), ("preset", "all_off")]


@pytest.mark.parametrize("switch,value", COVERAGE, ids=[f"{k}={v}" for k, v in COVERAGE])
def test_every_parameter_in_exactly_one_group(switch, value):
    if switch == "preset":
        off = dict(vae="none", private="none", public="none")
        overrides = off if value == "aml" else dict(off, adversarial="none", metric="none")
    else:
        overrides = {switch: value}
    model = tiny_model(**overrides)
    gen_groups, dis_groups = model.param_groups(LearningRates())
    held: dict[int, int] = {}
    for group in gen_groups + dis_groups:
        assert group["params"], f"empty group {group['name']}"
        for p in group["params"]:
            held[id(p)] = held.get(id(p), 0) + 1
    names = {id(p): n for n, p in model.named_parameters()}
    missing = [n for i, n in names.items() if i not in held]
    assert not missing, f"parameters in no optimiser group: {missing}"
    assert all(c == 1 for c in held.values()), "a parameter is in two groups"
    assert set(held) == set(names)
    assert [g["name"] for g in dis_groups] == (["discriminator"] if model.discriminator else [])
    torch.optim.Adam(gen_groups, betas=(0.9, 0.999), weight_decay=5e-4)  # accepted as groups


def test_group_learning_rates():
    model = tiny_model()
    gen_groups, dis_groups = model.param_groups(LearningRates())
    rates = {g["name"]: (g["lr"], g["lr_end"]) for g in gen_groups + dis_groups}
    assert rates == {"branches": (5e-3, 5e-5), "generator": (5e-3, 5e-5),
                     "vae": (1e-2, 1e-2), "private": (5e-3, 5e-5), "heads": (5e-3, 5e-5),
                     "gender": (5e-3, 5e-3), "nation": (5e-2, 5e-2),
                     "discriminator": (5e-3, 5e-3)}
    gen_groups, _ = model.param_groups(LearningRates(private=2e-3))
    assert {g["name"]: (g["lr"], g["lr_end"]) for g in gen_groups}["private"] == (2e-3, 2e-3)


def test_ddp_ignore_names_are_the_discriminator():
    model = tiny_model(adversarial="wgan")
    names = dict(model.named_parameters())
    ignored = model.ddp_ignore_names()
    assert ignored and all(n.startswith("discriminator.") and n in names for n in ignored)
    assert len(ignored) == sum(1 for _ in model.discriminator.parameters())
    assert tiny_model(adversarial="none").ddp_ignore_names() == []


def test_shared_generator_has_one_set_of_weights():
    shared, separate = tiny_model(shared_generator=True), tiny_model(shared_generator=False)
    assert list(shared.generators) == ["shared"]
    assert shared.generator("voice") is shared.generator("face")
    n_shared = sum(p.numel() for p in shared.generators.parameters())
    assert 2 * n_shared == sum(p.numel() for p in separate.generators.parameters())


# -- embeddings and scores -------------------------------------------------------------------------
def test_embed_shapes_and_eval_determinism():
    model = tiny_model()
    batch = make_batch("f2v", k=3)
    out = model(batch)
    assert out.query.shape == (3, 16) and out.candidates.shape == (3, 3, 16)
    assert out.h_all.shape == (3, 4, 16) and out.modality.tolist() == [[0, 0, 0, 1]] * 3
    voice = out.items["voice"]
    assert voice.mu.shape == voice.logvar.shape == voice.recon.shape == (9, 16)
    assert torch.equal(voice.target, voice.feature)  # the clean feature is the target
    model.eval()
    first = model(batch).items["voice"]
    assert torch.equal(first.z, first.mu)  # eval: no sampling
    assert torch.equal(first.h, model(batch).items["voice"].h)


@pytest.mark.parametrize("normalize", [True, False])
def test_embed_views_is_the_mean_of_the_views_embeddings(normalize):
    """``embed_views``: the mean of each view's ``h`` (re-normalised with normalised embeddings);
    a single view is ``embed``'s ``h`` unchanged."""
    model = tiny_model(normalize_embedding=normalize).eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(3, 4, 1, DIMS.n_bins, DIMS.frames, generator=g)  # (V, N, 1, F, T)
    attr = torch.randn(4, DIMS.n_audio_attr, generator=g)
    with torch.no_grad():
        views = torch.stack([model.embed("voice", x[v], attr).h for v in range(3)])  # (V, N, d)
        mean = views.mean(dim=0)
        want = torch.nn.functional.normalize(mean, dim=-1) if normalize else mean
        torch.testing.assert_close(model.embed_views("voice", x, attr), want)
        assert torch.equal(model.embed_views("voice", x[:1], attr), views[0])
        faces = torch.randn(2, 4, 3, DIMS.face_size, DIMS.face_size, generator=g)
        assert model.embed_views("face", faces, torch.rand(4, DIMS.n_face_attr)).shape == (4, 16)
    assert view_mean(torch.arange(6.0).reshape(6, 1), 2).flatten().tolist() == [1.5, 2.5, 3.5]
    with pytest.raises(ConfigError, match="eval_voice_crops"):
        tiny_cfg(eval_voice_crops=0)


@pytest.mark.parametrize("detach", [False, True])
def test_vae_detach_input_keeps_l_rec_out_of_the_generator(detach):
    """``model.vae_detach_input``: L_rec trains the VAEs; only without it does it reach G."""
    model = tiny_model(vae_detach_input=detach)
    model.train()
    terms = model.generator_losses(make_batch("v2f", k=2))
    terms["rec"].backward()
    generator = [p.grad for p in model.generators.parameters()]
    vae = [p.grad for p in model.vaes.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in vae)
    reached = any(g is not None and g.abs().sum() > 0 for g in generator)
    assert reached is (not detach)


@pytest.mark.parametrize("downstream", ["sample", "mean"])
def test_vae_downstream_mean_passes_mu_on_and_samples_for_the_decoder(downstream):
    model = tiny_model(vae="visual", private="none", vae_downstream=downstream)
    batch = make_batch("f2v", k=3)
    torch.manual_seed(1)
    first = model(batch).items["face"]
    torch.manual_seed(2)
    second = model(batch).items["face"]
    # the decoder always sees Eq. 1's sample, so the reconstructions differ between passes
    assert not torch.equal(first.recon, second.recon)
    if downstream == "mean":  # what goes on (and so h) is mu: the same in both passes
        assert torch.equal(first.z, first.mu) and torch.equal(first.h, second.h)
    else:
        assert not torch.equal(first.z, first.mu) and not torch.equal(first.h, second.h)


def test_score_keys_and_direction_invariance_of_pair_scores():
    model = tiny_model()
    model.eval()
    v2f = make_batch("v2f", b=2, k=2)
    scores = model.score(v2f)
    assert set(scores) == {"cosine", "verify", "distance", "match", "head"}
    assert all(s.shape == (2, 2) for s in scores.values())
    assert torch.equal(scores["head"], scores["match"])
    # the same (voice, face) pairs as f2v tuples with one candidate each: same pair scores
    for j in range(2):
        pair = {"direction": "f2v", "voice": v2f["voice"], "voice_attr": v2f["voice_attr"],
                "face": v2f["face"][:, j:j + 1], "face_attr": v2f["face_attr"][:, j:j + 1]}
        pair_scores = model.score(pair)
        assert torch.equal(pair_scores["head"], pair_scores["verify"])  # k = 1: verification
        for key in ("cosine", "verify", "distance"):
            torch.testing.assert_close(pair_scores[key][:, 0], scores[key][:, j])


def test_pair_scores_broadcast_for_retrieval():
    model = tiny_model()
    model.eval()
    voice = model.embed("voice", torch.randn(4, 1, DIMS.n_bins, DIMS.frames),
                        torch.randn(4, DIMS.n_audio_attr)).h
    face = model.embed("face", torch.rand(5, 3, DIMS.face_size, DIMS.face_size),
                       torch.rand(5, DIMS.n_face_attr)).h
    scores = model.pair_scores(voice[:, None], face[None])  # a 4 x 5 query-gallery matrix
    assert set(scores) == {"cosine", "verify", "distance"}
    assert all(v.shape == (4, 5) for v in scores.values())
    torch.testing.assert_close(scores["cosine"][1, 2],
                               torch.cosine_similarity(voice[1], face[2], dim=0))


def test_head_score_falls_back_to_distance_for_untrained_k():
    model = tiny_model(match_ks=[2])
    model.eval()
    scores = model.score(make_batch("v2f", k=3))
    assert "match" not in scores and torch.equal(scores["head"], scores["distance"])
    with pytest.raises(KeyError, match="match_ks"):
        model.train()
        model.generator_losses(make_batch("v2f", k=3))


def test_private_needs_attributes():
    model = tiny_model(private="concat")
    batch = make_batch()
    del batch["face_attr"]
    with pytest.raises(ValueError, match="face attributes"):
        model(batch)


def test_bad_direction_and_query_count():
    model = tiny_model()
    with pytest.raises(ValueError, match="direction"):
        model(dict(make_batch(), direction="a2v"))
    with pytest.raises(ValueError, match="one voice"):
        model(dict(make_batch("f2v", k=2), direction="v2f"))


# -- initialisation --------------------------------------------------------------------------------
def test_glorot_initialisation():
    model = tiny_model()
    lin = model.generators["voice"].net[0]
    bound = math.sqrt(6.0 / (lin.in_features + lin.out_features))
    assert lin.weight.abs().max().item() <= bound
    assert lin.weight.abs().max().item() > 0.8 * bound  # uniform over the whole Glorot range
    assert torch.count_nonzero(lin.bias) == 0
    conv = model.branches["voice"].features[0]
    fan_in, fan_out = conv.weight[0].numel(), conv.weight.shape[0] * conv.weight[0, 0].numel()
    assert conv.weight.abs().max().item() <= math.sqrt(6.0 / (fan_in + fan_out))
    torch_init = AVMatchNet(tiny_cfg(init="torch"), DIMS).generators["voice"].net[0]
    assert torch.count_nonzero(torch_init.bias) > 0  # PyTorch's default, not Glorot


# -- config and registry ---------------------------------------------------------------------------
def test_config_unknown_key_and_bad_choice_raise():
    with pytest.raises(ConfigError, match="unknown key"):
        ModelConfig.from_params({"model": {"adverserial": "wgan"}})
    with pytest.raises(ConfigError, match="model.vae"):
        ModelConfig.from_params({"model": {"vae": "video"}})
    with pytest.raises(ConfigError, match="heads"):
        ModelConfig(heads=("match", "rank"))
    with pytest.raises(ConfigError, match="model.generator_norm"):
        ModelConfig(generator_norm="layer")
    with pytest.raises(ConfigError, match="model.vae_downstream"):
        ModelConfig(vae_downstream="median")
    with pytest.raises(ConfigError, match="model.public_reduction"):
        ModelConfig(public_reduction="max")
    with pytest.raises(ConfigError, match="model.token_init"):
        ModelConfig(token_init="kaiming")
    with pytest.raises(ConfigError, match="model.nce_temperature"):
        ModelConfig(nce_temperature=0.0)


def test_config_round_trip_through_json_lists():
    cfg = tiny_cfg(metric="triplet")
    assert build(ModelConfig, cfg.to_dict()) == cfg
    assert isinstance(cfg.audio_strides[0], tuple)


def test_build_model_from_params():
    model = build_model({"model": {**TINY, "public": "gender"}, "lambda1": 1.0}, DIMS)
    assert model.nation_head is None and model.gender_head is not None


def test_timm_registry():
    aml = timm.create_model("avmatch_aml", dims=dataclasses.asdict(DIMS), **TINY)
    assert (aml.cfg.vae, aml.cfg.private, aml.cfg.public) == ("none", "none", "none")
    assert aml.cfg.loss_weighting == "aml" and not aml.vaes and not aml.private
    full = timm.create_model("avmatch_p2vanet", dims=DIMS, **TINY)
    assert full.cfg == tiny_cfg() and len(full.vaes) == 2
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("avmatch_p3vanet")
    with pytest.raises(ConfigError, match="unknown key"):
        timm.create_model("avmatch_aml", dims=DIMS, embedding_dim=64)
    with pytest.raises(ValueError, match="pretrained"):
        timm.create_model("avmatch_aml", pretrained=True)


@pytest.mark.parametrize("shared", [False, True])
def test_generator_norm_batch_normalises_every_generator(shared):
    net = AVMatchNet(tiny_cfg(generator_norm="batch", shared_generator=shared), DIMS)
    gens = list(net.generators.values())
    assert gens and all(isinstance(g.norm, nn.BatchNorm1d) and not g.norm.affine for g in gens)
    assert all(g.norm is None for g in AVMatchNet(tiny_cfg(generator_norm="none"), DIMS).generators.values())
    assert ModelConfig().generator_norm == "batch"  # the default, chosen on val (docs/model.md)
