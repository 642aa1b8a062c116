"""AVMatchNet: AML and P2VANet in one network, every module switched by params.

One code path builds both papers' models from :class:`ModelConfig` (the ``model`` section of
params.yaml); the AML baseline is the setting ``vae: none, private: none, public: none``.

Per modality (voice or face), :meth:`AVMatchNet.embed` computes::

    x --ConvBranch--> 3200 --Generator--> f (128)            AML III-B, Eq. 1-2
      f --FeatureVAE--> Z (128), recon, mu, logvar            P2VANet Eq. 1-4   (model.vae;
                                                              mu goes on: model.vae_downstream)
      (Z, P) --private module--> ZP (128)                     P2VANet Eq. 6-12  (model.private)
      h = ZP (or Z, or f when those modules are off)

and on a matching tuple (one query, ``k`` candidates of the other modality; the direction is a
field of the batch, never a copy of the code) the generator side minimises (P2VANet Eq. 18,
AML Eq. 9-10)::

    L_total - L_dis = w_metric L_metric + l1 L_rec + w_cls L_cls + l3 L_gender + l4 L_nation
                      + adv_weight * (generator adversarial term, -L_dis by default)

with ``(w_metric, w_cls) = (1, lambda2)`` (P2VANet) or ``(beta, gamma)`` (AML Eq. 9), while the
discriminator minimises ``L_dis`` for ``model.disc_steps`` steps per generator step (AML
Algorithm 1). Ambiguities of the papers and our choices: docs/model.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from timm.models import register_model
from torch import Tensor, nn
from torch.func import functional_call

from model.backend import BACKENDS, CCABackend
from model.branches import GENERATOR_NORMS, ConvBranch, Generator
from model.cross_transformer import TOKEN_INITS
from model.heads import Discriminator, MatchingClassifier, RetrievalDistance, VerificationClassifier
from model.losses import (
    ITEM_REDUCTIONS,
    cross_modal_nce_loss,
    discriminator_accuracy,
    discriminator_loss,
    generator_adversarial_loss,
    lifted_structure_loss,
    per_tuple_ce,
    ranked_list_loss,
    triplet_loss,
)
from model.private import PRIVATE_KINDS, build_private
from model.vae import FeatureVAE, VAEOutput, reconstruction_loss
from model.xattr import CrossAttributeRegression
from pipeline.common.config import ConfigError, build, section
from pipeline.common.directions import MODALITIES, QUERY_MODALITY

log = logging.getLogger(__name__)

__all__ = ["ModelConfig", "InputDims", "LossWeights", "LearningRates", "Embedding",
           "TupleEmbeddings", "AVMatchNet", "build_model", "avmatch_aml", "avmatch_p2vanet",
           "AML_WEIGHTS", "MODALITIES", "QUERY_MODALITY"]

ADVERSARIAL = ("none", "gan", "lsgan", "wgan")
METRIC = ("none", "lifted", "triplet", "ranked_list")
VAE = ("none", "audio", "visual", "both")
PUBLIC = ("none", "gender", "nation", "both")
SCORES = ("head", "cosine")
HEADS = ("match", "verify", "retrieve")
LOSS_WEIGHTING = ("p2vanet", "aml")
EQ18_LAMBDA4 = ("nation", "gender")
GENERATOR_ADV = ("negate", "flip")
VAE_DOWNSTREAM = ("sample", "mean")
INITS = ("glorot", "torch")
BRANCH_NORMS: dict[str, type[nn.Module] | Callable[[int], nn.Module]] = {
    "batch": nn.BatchNorm2d, "layer": partial(nn.GroupNorm, 1), "none": lambda _: nn.Identity()}
# AML {lambda (margin), beta, gamma}: III-G says {1.0, 3.0, 2.0}, IV-G says {1.0, 2.0, 3.0}.
AML_WEIGHTS = {"iii_g": (1.0, 3.0, 2.0), "iv_g": (1.0, 2.0, 3.0)}
VAE_MODALITIES = {"none": (), "audio": ("voice",), "visual": ("face",), "both": MODALITIES}
PUBLIC_HEADS = {"none": (), "gender": ("gender",), "nation": ("nation",),
                "both": ("gender", "nation")}


def _check(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ConfigError(f"model.{name} must be one of {', '.join(map(str, choices))}; "
                          f"got {value!r}")


@dataclass(frozen=True)
class ModelConfig:
    """The ``model`` params section (defaults: the full P2VANet). See docs/model.md."""

    # -- ablation switches ------------------------------------------------------------------
    adversarial: str = "wgan"  # none | gan | lsgan | wgan            (AML Table VII, VIII)
    metric: str = "lifted"  # none | lifted | triplet | ranked_list   (AML Table VII, IX)
    vae: str = "both"  # none | audio | visual | both                 (P2VANet Tables III-V)
    private: str = "cross_transformer"  # none | concat | attention | cross_transformer (VI)
    public: str = "both"  # none | gender | nation | both             (P2VANet Tables III-IV)
    # -- sizes ------------------------------------------------------------------------------
    embed_dim: int = 128
    audio_channels: tuple[int, ...] = (8, 16, 32, 32, 32)
    audio_kernels: tuple[int, ...] = (5, 3, 3, 3, 3)
    audio_strides: tuple[tuple[int, int], ...] = ((4, 2), (2, 2), (2, 2), (1, 1), (1, 1))
    face_channels: tuple[int, ...] = (16, 32, 32, 32, 32)
    face_kernels: tuple[int, ...] = (5, 3, 3, 3, 3)
    face_strides: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (1, 1), (1, 1), (1, 1))
    pool_size: tuple[int, int] = (10, 10)
    branch_norm: str = "batch"  # batch (AML III-G) | layer (GroupNorm(1, C): per item) | none
    generator_hidden: tuple[int, ...] = (256,)
    generator_norm: str = "batch"  # none | batch: BatchNorm1d (no affine) on the generator output
    shared_generator: bool = False
    # -- adversarial learning (AML III-C, Eq. 3, 10-11, Algorithm 1) --------------------------
    discriminator_hidden: tuple[int, ...] = ()
    disc_steps: int = 5  # T: discriminator steps per generator step
    wgan_clip: float = 0.01
    adv_weight: float = 1.0  # weight of the generator's adversarial term (1 in Eq. 10)
    generator_adv: str = "negate"  # negate (Eq. 10: -L_dis) | flip (swapped modality labels)
    # -- metric learning (AML Eq. 4-5, P2VANet Eq. 15-16) -------------------------------------
    metric_negatives: str = "tuple"  # tuple (Eq. 5) | batch: the batch's other-identity candidates
    margin: float = 1.0  # lifted-structure margin (AML lambda, P2VANet theta); triplet margin
    rll_margin: float = 0.4  # ranked list loss: margin m
    rll_alpha: float = 1.2  # ranked list loss: negative boundary alpha
    rll_tn: float = 5.0  # ranked list loss: negative weighting temperature
    normalize_embedding: bool = True  # L2-normalise h (unnormalised h diverges: docs/model.md)
    # -- task heads (AML III-E) --------------------------------------------------------------
    heads: tuple[str, ...] = HEADS  # heads trained by L_cls: match (Eq. 6) verify (7) retrieve (8)
    match_ks: tuple[int, ...] = (2, 10)  # one matching classifier per gallery size k
    head_hidden: tuple[int, ...] = (256,)  # hidden widths of the matching/verification heads
    retrieval_hidden: tuple[int, ...] = (128,)  # hidden widths of the retrieval distance MLP
    score: str = "cosine"  # cosine | head: the evaluation score reported as the model's
    backend: str = "cca"  # none | cca: cosine taken after a CCA back-end fitted on train embeddings
    backend_ridge: float = 0.003  # the back-end's ridge (unit-norm h: about 1/d variance per direction)
    # -- evaluation views (val, test, inference): embeddings averaged over fixed views ------
    eval_voice_crops: int = 5  # spectrogram crops per voice, evenly spaced over the utterance
    eval_face_flip: bool = True  # also embed each face mirrored
    # -- P2VANet modules ---------------------------------------------------------------------
    vae_hidden: tuple[int, ...] = (128,)
    vae_noise: float = 0.1  # audio VAE corruption: Gaussian noise std / feature RMS
    vae_detach_target: bool = True
    vae_detach_input: bool = True  # L_rec trains the VAEs only (no gradient into the generators)
    vae_downstream: str = "mean"  # mean (mu; the sample feeds the decoder) | sample (Eq. 1's Z)
    audio_attr_tokens: int = 32  # IS09: 32 contours x 12 functionals
    face_attr_tokens: int = 12  # one token per face attribute
    token_init: str = "glorot"  # glorot | balanced: attribute-token scale (docs/model.md)
    ct_heads: int = 4
    ct_mlp_ratio: float = 2.0
    att_reduction: int = 4  # channel-attention reduction of private=attention
    public_reduction: str = "mean"  # mean (over a tuple's items) | sum (Eq. 13-14 as written)
    identity_weight: float = 1.0  # > 0: a train-identity softmax on h of both modalities (not in
    #                               the papers), added to Eq. 18 with this weight; 0: Eq. 18 alone
    nce_weight: float = 1.0  # > 0: a cross-modal InfoNCE over the batch's candidates (not in the
    #                          papers), added to Eq. 18 with this weight; 0: Eq. 18 alone
    nce_temperature: float = 0.1
    xattr_weight: float = 0.0  # > 0: each modality's h regresses its identity's mean private
    #                            attributes of the other modality (not in the papers; model/xattr.py)
    # -- loss weighting and the papers' ambiguities ------------------------------------------
    loss_weighting: str = "p2vanet"  # p2vanet (Eq. 18) | aml (Eq. 9: beta, gamma)
    aml_weights: str = "iii_g"  # iii_g: {lambda,beta,gamma} = {1,3,2} | iv_g: {1,2,3}
    eq18_lambda4: str = "nation"  # nation: lambda4 * L_nation | gender: Eq. 18 as printed
    init: str = "glorot"  # glorot (AML III-G) | torch (PyTorch defaults)

    def __post_init__(self) -> None:
        for name, choices in (("adversarial", ADVERSARIAL), ("metric", METRIC), ("vae", VAE),
                              ("private", PRIVATE_KINDS), ("public", PUBLIC), ("score", SCORES),
                              ("backend", BACKENDS),
                              ("loss_weighting", LOSS_WEIGHTING),
                              ("aml_weights", tuple(AML_WEIGHTS)),
                              ("eq18_lambda4", EQ18_LAMBDA4), ("generator_adv", GENERATOR_ADV),
                              ("init", INITS), ("branch_norm", tuple(BRANCH_NORMS)),
                              ("generator_norm", GENERATOR_NORMS),
                              ("vae_downstream", VAE_DOWNSTREAM),
                              ("public_reduction", ITEM_REDUCTIONS),
                              ("token_init", TOKEN_INITS),
                              ("metric_negatives", ("tuple", "batch"))):
            _check(name, getattr(self, name), choices)
        for head in self.heads:
            _check("heads[]", head, HEADS)
        if any(k < 1 for k in self.match_ks):
            raise ConfigError(f"model.match_ks must be positive; got {self.match_ks}")
        if self.eval_voice_crops < 1:
            raise ConfigError(f"model.eval_voice_crops must be >= 1; got {self.eval_voice_crops}")
        if self.xattr_weight < 0:
            raise ConfigError(f"model.xattr_weight must be >= 0; got {self.xattr_weight}")
        if self.nce_temperature <= 0:
            raise ConfigError(f"model.nce_temperature must be positive; got {self.nce_temperature}")
        if self.backend_ridge <= 0:
            raise ConfigError(f"model.backend_ridge must be positive; got {self.backend_ridge}")
        if self.disc_steps < 1:
            raise ConfigError(f"model.disc_steps must be >= 1; got {self.disc_steps}")
        if len(self.pool_size) != 2:
            raise ConfigError(f"model.pool_size must be [h, w]; got {self.pool_size}")

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> ModelConfig:
        """Build from the whole params dict (its ``model`` section; unknown keys raise)."""
        return build(cls, section(params, "model"), name="model")

    @classmethod
    def from_checkpoint(cls, d: Mapping[str, Any], name: str = "checkpoint model") -> ModelConfig:
        """Rebuild a checkpoint's config (:meth:`to_dict`); a key the checkpoint predates takes
        the value it was trained and selected with (:data:`CHECKPOINT_PREDATES`)."""
        return build(cls, {**CHECKPOINT_PREDATES, **d}, name=name)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists); ``build(ModelConfig, d)`` restores it."""
        return dataclasses.asdict(self)


# Model settings added after checkpoints were first written, with the value a checkpoint that
# lacks the key was made with: before the CCA back-end, cosine was the plain cosine of h; before
# the InfoNCE term and the cross-modal attribute targets, there were none.
CHECKPOINT_PREDATES: dict[str, Any] = {"backend": "none", "nce_weight": 0.0, "xattr_weight": 0.0}


def view_mean(t: Tensor, views: int, normalize: bool = False) -> Tensor:
    """Mean over ``views`` of rows stacked view by view: ``(V*N, ...)`` -> ``(N, ...)``,
    L2-normalised along the last axis when ``normalize`` (and ``views`` > 1)."""
    if views == 1:
        return t
    out = t.reshape(views, -1, *t.shape[1:]).mean(dim=0)  # (V*N, ...) -> (V, N, ...) -> (N, ...)
    return F.normalize(out, dim=-1) if normalize else out


@dataclass(frozen=True)
class InputDims:
    """Sizes that come from the data stores and tables, not from params."""

    n_bins: int = 224  # spectrogram frequency bins F
    frames: int = 125  # spectrogram frames T
    face_size: int = 64  # face side S
    n_audio_attr: int = 384  # IS09 functionals
    n_face_attr: int = 12  # face attributes
    n_gender: int = 2
    n_identity: int = 2  # training-split identities (model.identity_weight's classifier)
    n_nation: int = 2  # training-split nationality classes (rare ones pooled into "other")


@dataclass(frozen=True)
class LossWeights:
    """Loss weights: P2VANet Eq. 18's ``lambda1..lambda4`` (top-level params) and AML Eq. 9's
    ``beta, gamma`` (from ``model.aml_weights``)."""

    lambda1: float = 1.5  # L_rec
    lambda2: float = 2.0  # L_cls
    lambda3: float = 1.0  # L_gender
    lambda4: float = 1.5  # L_nation
    beta: float = AML_WEIGHTS["iii_g"][1]  # AML: L_metric
    gamma: float = AML_WEIGHTS["iii_g"][2]  # AML: L_cls

    @classmethod
    def from_params(cls, params: Mapping[str, Any], cfg: ModelConfig | None = None) -> LossWeights:
        """Top-level ``lambda1..lambda4`` (defaults when absent) and the AML weights of
        ``cfg.aml_weights`` (``cfg`` defaults to the params' ``model`` section)."""
        cfg = cfg or ModelConfig.from_params(params)
        lambdas = {k: float(params[k]) for k in ("lambda1", "lambda2", "lambda3", "lambda4")
                   if k in params}
        _, beta, gamma = AML_WEIGHTS[cfg.aml_weights]
        return cls(**lambdas, beta=beta, gamma=gamma)

    def coefficients(self, cfg: ModelConfig) -> dict[str, float]:
        """Weight of each loss term under ``cfg.loss_weighting`` and ``cfg.eq18_lambda4``."""
        if cfg.loss_weighting == "aml":
            coef = {"metric": self.beta, "cls": self.gamma}
        else:
            coef = {"metric": 1.0, "cls": self.lambda2}
        coef.update(rec=self.lambda1, gender=self.lambda3, nation=self.lambda4)
        if cfg.eq18_lambda4 == "gender":  # Eq. 18 as printed: lambda3 L_gender + lambda4 L_gender
            coef.update(gender=self.lambda3 + self.lambda4, nation=0.0)
        return coef


@dataclass(frozen=True)
class LearningRates:
    """Per-module initial (and final, for decaying groups) learning rates.

    P2VANet IV-B: VAE 1e-2, discriminator 5e-3, gender 5e-3, nationality 5e-2; AML III-G:
    branches, generator and heads decay logarithmically from 5e-3 to 5e-5 (private-attribute
    modules, which neither paper gives a rate for, follow them). These defaults are the papers'
    rates; the train stage builds this from ``TrainConfig.learning_rates`` (params.yaml
    ``train``), whose branch rate defaults to 1e-3 -> 1e-5 (docs/model.md, "Defaults chosen on
    val").
    """

    base: float = 5e-3
    base_end: float = 5e-5
    vae: float = 1e-2
    discriminator: float = 5e-3
    gender: float = 5e-3
    nation: float = 5e-2
    private: float | None = None  # None: base -> base_end; a value: constant


# child module name -> optimiser group; a child missing here makes param_groups() raise
PARAM_GROUP = {"branches": "branches", "generators": "generator", "vaes": "vae",
               "private": "private", "match_head": "heads", "verify_head": "heads",
               "retrieval_head": "heads", "gender_head": "gender", "nation_head": "nation",
               "identity_head": "heads", "xattr": "heads",
               "discriminator": "discriminator",
               "backend": "backend"}  # the CCA back-end: buffers only, fitted, never optimised


@dataclass
class Embedding:
    """Embeddings of ``N`` items of one modality, with what the losses need."""

    h: Tensor  # (N, d) final embedding
    feature: Tensor  # (N, d) generator output f (the VAE input)
    z: Tensor  # (N, d) what the VAE passes on: Z or mu (model.vae_downstream); f without a VAE
    vae: VAEOutput | None = None

    @property
    def mu(self) -> Tensor | None:
        return None if self.vae is None else self.vae.mu

    @property
    def logvar(self) -> Tensor | None:
        return None if self.vae is None else self.vae.logvar

    @property
    def recon(self) -> Tensor | None:
        return None if self.vae is None else self.vae.recon

    @property
    def target(self) -> Tensor | None:
        return None if self.vae is None else self.vae.target


@dataclass
class TupleEmbeddings:
    """Embeddings of a batch of ``B`` matching tuples of one direction."""

    direction: str
    batch_size: int
    items: dict[str, Embedding]  # modality -> Embedding of its B * n items (tuple-major)
    counts: dict[str, int] = field(default_factory=dict)  # modality -> items per tuple

    def h(self, modality: str) -> Tensor:
        """``(B, n, d)`` embeddings of one modality."""
        emb = self.items[modality].h
        return emb.reshape(self.batch_size, self.counts[modality], -1)  # (B*n, d) -> (B, n, d)

    @property
    def query_modality(self) -> str:
        return QUERY_MODALITY[self.direction]

    @property
    def candidate_modality(self) -> str:
        return MODALITIES[1 - MODALITIES.index(self.query_modality)]

    @property
    def query(self) -> Tensor:
        """``(B, d)``."""
        return self.h(self.query_modality)[:, 0]

    @property
    def candidates(self) -> Tensor:
        """``(B, k, d)``."""
        return self.h(self.candidate_modality)

    @property
    def k(self) -> int:
        return self.counts[self.candidate_modality]

    def pairs(self) -> tuple[Tensor, Tensor]:
        """(voice, face) embeddings of every (query, candidate) pair, ``(B, k, d)`` each."""
        query = self.query[:, None].expand_as(self.candidates)  # (B, k, d)
        if self.query_modality == "voice":
            return query, self.candidates
        return self.candidates, query

    @property
    def h_all(self) -> Tensor:
        """``(B, n_voice + n_face, d)``: every item of each tuple, voices first."""
        return torch.cat([self.h(m) for m in MODALITIES], dim=1)

    @property
    def modality(self) -> Tensor:
        """``(B, n_voice + n_face)`` modality labels of :attr:`h_all` (0 voice, 1 face)."""
        labels = [torch.full((self.counts[m],), i, dtype=torch.long)
                  for i, m in enumerate(MODALITIES)]
        row = torch.cat(labels).to(self.items["voice"].h.device)
        return row[None].expand(self.batch_size, -1)


def _item_labels(batch: Mapping[str, Any], name: str) -> Tensor:
    """``(B, n_voice + n_face)`` per-item labels ``voice_<name>`` then ``face_<name>``."""
    missing = [f"{m}_{name}" for m in MODALITIES if f"{m}_{name}" not in batch]
    if missing:
        raise KeyError(f"batch lacks {', '.join(missing)}, needed by this model setting")
    return torch.cat([batch[f"{m}_{name}"] for m in MODALITIES], dim=1)


class AVMatchNet(nn.Module):
    """AML / P2VANet voice-face matching network (see the module docstring)."""

    def __init__(self, cfg: ModelConfig | None = None, dims: InputDims | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        self.dims = dims = dims or InputDims()
        d = cfg.embed_dim
        norm = BRANCH_NORMS[cfg.branch_norm]
        self.branches = nn.ModuleDict({
            "voice": ConvBranch(1, cfg.audio_channels, cfg.audio_kernels, cfg.audio_strides,
                                cfg.pool_size, norm_layer=norm),
            "face": ConvBranch(3, cfg.face_channels, cfg.face_kernels, cfg.face_strides,
                               cfg.pool_size, norm_layer=norm)})
        widths = {m: b.num_features for m, b in self.branches.items()}
        if cfg.shared_generator:
            if widths["voice"] != widths["face"]:
                raise ConfigError(f"model.shared_generator needs equal branch outputs; "
                                  f"got {widths}")
            self.generators = nn.ModuleDict({
                "shared": Generator(widths["voice"], cfg.generator_hidden, d,
                                    norm=cfg.generator_norm)})
        else:
            self.generators = nn.ModuleDict({
                m: Generator(widths[m], cfg.generator_hidden, d, norm=cfg.generator_norm)
                for m in MODALITIES})
        self.vaes = nn.ModuleDict({
            m: FeatureVAE(d, d, cfg.vae_hidden, noise=cfg.vae_noise if m == "voice" else 0.0,
                          detach_target=cfg.vae_detach_target,
                          detach_input=cfg.vae_detach_input)
            for m in VAE_MODALITIES[cfg.vae]})
        n_attr = {"voice": dims.n_audio_attr, "face": dims.n_face_attr}
        n_tokens = {"voice": cfg.audio_attr_tokens, "face": cfg.face_attr_tokens}
        self.private = nn.ModuleDict({
            m: build_private(cfg.private, d, n_attr[m], n_tokens[m], num_heads=cfg.ct_heads,
                             mlp_ratio=cfg.ct_mlp_ratio, reduction=cfg.att_reduction,
                             token_init=cfg.token_init)
            for m in MODALITIES if cfg.private != "none"})
        self.match_head = (MatchingClassifier(d, cfg.match_ks, cfg.head_hidden)
                           if "match" in cfg.heads else None)
        self.verify_head = (VerificationClassifier(d, cfg.head_hidden)
                            if "verify" in cfg.heads else None)
        self.retrieval_head = (RetrievalDistance(d, cfg.retrieval_hidden)
                               if "retrieve" in cfg.heads else None)
        public = PUBLIC_HEADS[cfg.public]
        self.gender_head = nn.Linear(d, dims.n_gender) if "gender" in public else None
        self.nation_head = nn.Linear(d, dims.n_nation) if "nation" in public else None
        self.identity_head = nn.Linear(d, dims.n_identity) if cfg.identity_weight > 0 else None
        self.xattr = (CrossAttributeRegression(d, n_attr, dims.n_identity)
                      if cfg.xattr_weight > 0 else None)
        self.discriminator = (Discriminator(d, cfg.discriminator_hidden)
                              if cfg.adversarial != "none" else None)
        self.backend = CCABackend(d, cfg.backend_ridge) if cfg.backend == "cca" else None
        if cfg.init == "glorot":
            self.apply(_glorot)
        self.clip_discriminator()

    # -- embeddings ----------------------------------------------------------------------------
    def generator(self, modality: str) -> Generator:
        return self.generators["shared" if self.cfg.shared_generator else modality]

    def embed(self, modality: str, x: Tensor, attr: Tensor | None = None) -> Embedding:
        """Embed ``N`` items of one modality: ``x (N, C, H, W)``, ``attr (N, A)`` -> h ``(N, d)``.

        Voices are spectrograms ``(N, 1, F, T)``, faces ``(N, 3, S, S)`` in [-1, 1]; ``attr`` are
        the private attributes (needed only when ``model.private`` is not ``none``).
        """
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        f = self.generator(modality)(self.branches[modality](x))  # (N, d): AML Eq. 1-2
        vae = self.vaes[modality](f) if modality in self.vaes else None  # P2VANet Eq. 1-4
        z = f if vae is None else (vae.z if self.cfg.vae_downstream == "sample" else vae.mu)
        h = z
        if modality in self.private:  # P2VANet Eq. 6-12
            if attr is None:
                raise ValueError(f"model.private={self.cfg.private} needs {modality} attributes")
            h = self.private[modality](z, attr.to(z.dtype))
        if self.cfg.normalize_embedding:
            h = F.normalize(h, dim=-1)
        return Embedding(h=h, feature=f, z=z, vae=vae)

    def embed_views(self, modality: str, x: Tensor, attr: Tensor | None = None) -> Tensor:
        """Evaluation embedding of ``N`` items seen in ``V`` fixed views (voice crops, a face and
        its mirror image: ``model.data.eval_views``): ``x (V, N, C, H, W)``, ``attr (N, A)``
        -> ``h (N, d)``, the mean of the views' ``h`` (L2-normalised again when
        ``normalize_embedding``). One view gives :meth:`embed`'s ``h`` unchanged."""
        v, n = x.shape[:2]
        flat = x.reshape(v * n, *x.shape[2:])  # (V, N, C, H, W) -> (V*N, C, H, W)
        rep = None if attr is None else attr.repeat(v, 1)  # (N, A) -> (V*N, A)
        return view_mean(self.embed(modality, flat, rep).h, v, self.cfg.normalize_embedding)

    def forward(self, batch: Mapping[str, Any], weights: LossWeights | None = None
                ) -> TupleEmbeddings | tuple[dict[str, Tensor], TupleEmbeddings]:
        """Embed a batch of matching tuples; with ``weights``, also compute the generator losses.

        ``model(batch)`` returns the :class:`TupleEmbeddings`; ``model(batch, weights)`` returns
        ``(generator_losses(...), embeddings)`` so that every loss is computed inside
        ``forward`` (what DistributedDataParallel needs to see every parameter it syncs).
        """
        out = self.encode(batch)
        if weights is None:
            return out
        return self.generator_losses(batch, weights, out), out

    def encode(self, batch: Mapping[str, Any]) -> TupleEmbeddings:
        """Embed every item of a batch of matching tuples (see docs/model.md for the keys)."""
        direction = batch["direction"]
        if direction not in QUERY_MODALITY:
            raise ValueError(f"unknown direction {direction!r}; expected v2f or f2v")
        b = batch["voice"].shape[0]
        items, counts = {}, {}
        for m in MODALITIES:
            x = batch[m]  # (B, n, C, H, W)
            counts[m] = x.shape[1]
            attr = batch.get(f"{m}_attr")
            if attr is not None:
                attr = attr.flatten(0, 1)  # (B, n, A) -> (B*n, A)
            items[m] = self.embed(m, x.flatten(0, 1), attr)  # (B, n, C, H, W) -> (B*n, C, H, W)
        if counts[QUERY_MODALITY[direction]] != 1:
            raise ValueError(f"{direction} tuples need one {QUERY_MODALITY[direction]} per tuple; "
                             f"got {counts}")
        return TupleEmbeddings(direction, b, items, counts)

    # -- losses --------------------------------------------------------------------------------
    def metric_loss(self, out: TupleEmbeddings, batch: Mapping[str, Any]) -> Tensor:
        """``L_metric`` (AML Eq. 4-5 / P2VANet Eq. 15-16, or AML Table IX's alternatives)."""
        kind, label = self.cfg.metric, batch["label"]
        if kind == "lifted":
            ids = None
            if self.cfg.metric_negatives == "batch":
                ids = (batch[f"{out.query_modality}_identity"][:, 0],  # (B, 1) -> (B,)
                       batch[f"{out.candidate_modality}_identity"])  # (B, k)
            return lifted_structure_loss(out.query, out.candidates, label, self.cfg.margin, ids)
        if kind == "triplet":
            return triplet_loss(out.query, out.candidates, label, self.cfg.margin)
        if kind == "ranked_list":
            identities = _item_labels(batch, "identity").reshape(-1)  # (B, n) -> (B*n,)
            items = out.h_all.flatten(0, 1)  # (B, n, d) -> (B*n, d)
            return ranked_list_loss(items, identities, self.cfg.rll_margin, self.cfg.rll_alpha,
                                    self.cfg.rll_tn)
        raise ValueError(f"model.metric={kind!r} has no loss")

    def classification_losses(self, out: TupleEmbeddings, label: Tensor) -> dict[str, Tensor]:
        """The task-head cross-entropies of AML Eq. 6 (match), 7 (verify) and 8 (retrieve)."""
        terms = {}
        if self.match_head is not None:
            terms["cls_match"] = F.cross_entropy(self.match_head(out.query, out.candidates), label)
        voice, face = out.pairs()  # (B, k, d) each
        if self.verify_head is not None:
            logits = self.verify_head(voice, face)  # (B, k, 2)
            same = (torch.arange(out.k, device=label.device)[None] == label[:, None]).long()
            terms["cls_verify"] = F.cross_entropy(logits.reshape(-1, 2),  # (B*k, 2)
                                                  same.reshape(-1))  # (B, k) -> (B*k,)
        if self.retrieval_head is not None:
            distance = self.retrieval_head(voice, face)  # (B, k)
            terms["cls_retrieve"] = F.cross_entropy(-distance, label)
        return terms

    def _discriminate(self, h: Tensor, detach_params: bool) -> Tensor:
        if not detach_params:
            return self.discriminator(h)
        # copies: the discriminator may be updated (in place) before this graph is backpropagated
        params = {n: p.detach().clone() for n, p in self.discriminator.named_parameters()}
        return functional_call(self.discriminator, params, (h,))

    def generator_losses(self, batch: Mapping[str, Any], weights: LossWeights | None = None,
                         out: TupleEmbeddings | None = None) -> dict[str, Tensor]:
        """Every loss term of the generator side, and ``total`` (AML Eq. 10, P2VANet Eq. 18).

        Keys (only the enabled ones): ``metric``; ``rec`` with ``rec_voice``/``rec_face``
        (P2VANet Eq. 2, 4: summed over a tuple's items, averaged over tuples); ``cls`` with
        ``cls_match``/``cls_verify``/``cls_retrieve``; ``gender``, ``nation`` (Eq. 13-14);
        ``identity``, ``nce`` and ``xattr`` (not in the papers: ``model.identity_weight``,
        ``nce_weight``, ``xattr_weight``);
        ``dis`` (``L_dis`` under the current discriminator) and ``adv`` (the generator's
        adversarial term, ``-L_dis`` by default); ``total``. The discriminator's parameters
        receive no gradient from ``total``.
        """
        weights = weights or LossWeights()
        out = out if out is not None else self.encode(batch)
        coef = weights.coefficients(self.cfg)
        label = batch["label"]
        terms: dict[str, Tensor] = {}
        if self.cfg.metric != "none":
            terms["metric"] = self.metric_loss(out, batch)
        if len(self.vaes):
            for m in self.vaes:
                rec = reconstruction_loss(out.items[m].vae)  # (B*n,)
                per_tuple = rec.view(out.batch_size, -1).sum(dim=1)  # (B*n,) -> (B, n) -> (B,)
                terms[f"rec_{m}"] = per_tuple.mean()
            terms["rec"] = sum(terms[f"rec_{m}"] for m in self.vaes)
        cls_terms = self.classification_losses(out, label)
        if cls_terms:
            terms.update(cls_terms)
            terms["cls"] = sum(cls_terms.values())
        for name, head in (("gender", self.gender_head), ("nation", self.nation_head)):
            if head is not None:
                terms[name] = per_tuple_ce(head(out.h_all), _item_labels(batch, name),
                                           self.cfg.public_reduction)
        if self.identity_head is not None:
            terms["identity"] = per_tuple_ce(self.identity_head(out.h_all),
                                             _item_labels(batch, "identity"), "mean")
        coef["identity"] = self.cfg.identity_weight
        if self.cfg.nce_weight > 0:
            terms["nce"] = cross_modal_nce_loss(
                out.query, out.candidates, batch[f"{out.query_modality}_identity"][:, 0],
                batch[f"{out.candidate_modality}_identity"], self.cfg.nce_temperature)
        coef["nce"] = self.cfg.nce_weight
        if self.xattr is not None:
            terms["xattr"] = sum(self.xattr.loss(m, out.items[m].h,
                                                 batch[f"{m}_identity"].reshape(-1))  # (B, n) -> (B*n,)
                                 for m in MODALITIES)
        coef["xattr"] = self.cfg.xattr_weight
        total = sum(coef[n] * terms[n] for n in ("metric", "rec", "cls", "gender", "nation",
                                                 "identity", "nce", "xattr") if n in terms)
        if self.discriminator is not None:
            logits = self._discriminate(out.h_all, detach_params=True)  # (B, n, 2)
            terms["dis"] = discriminator_loss(logits, out.modality, self.cfg.adversarial)
            terms["adv"] = generator_adversarial_loss(logits, out.modality, self.cfg.adversarial,
                                                      self.cfg.generator_adv)
            total = total + self.cfg.adv_weight * terms["adv"]
        terms["total"] = total if torch.is_tensor(total) else out.query.sum() * 0.0
        return terms

    def discriminator_loss(self, out: TupleEmbeddings | Mapping[str, Any]
                           ) -> tuple[Tensor, Tensor]:
        """``(L_dis, accuracy)`` of the discriminator on detached embeddings (AML Eq. 3).

        ``out`` is the :class:`TupleEmbeddings` of the generator step (AML Algorithm 1 computes
        both losses once per batch) or a batch, which is then embedded without gradients.
        """
        if self.discriminator is None:
            raise RuntimeError("model.adversarial is none: there is no discriminator")
        if not isinstance(out, TupleEmbeddings):
            with torch.no_grad():
                out = self.encode(out)
        logits = self.discriminator(out.h_all.detach())  # (B, n, 2)
        modality = out.modality
        loss = discriminator_loss(logits, modality, self.cfg.adversarial)
        return loss, discriminator_accuracy(logits.detach(), modality)

    def clip_discriminator(self) -> None:
        """WGAN weight clipping to ``[-wgan_clip, wgan_clip]`` (no-op for the other variants)."""
        if self.discriminator is not None and self.cfg.adversarial == "wgan":
            self.discriminator.clip_(self.cfg.wgan_clip)

    def discriminator_update(self, out: TupleEmbeddings, optimizer: torch.optim.Optimizer,
                             steps: int | None = None) -> tuple[Tensor, Tensor]:
        """AML Algorithm 1 lines 7-10: ``steps`` (default ``model.disc_steps``) descent steps on
        ``L_dis`` over the detached embeddings ``out``, clipping after each for WGAN.

        Returns ``(L_dis, accuracy)`` measured before the last step. Under torch.distributed the
        discriminator's gradients are averaged over the processes before each step (this update
        runs outside DistributedDataParallel's forward).
        """
        for _ in range(steps or self.cfg.disc_steps):
            optimizer.zero_grad(set_to_none=True)
            loss, acc = self.discriminator_loss(out)
            loss.backward()
            _average_gradients(self.discriminator.parameters())
            optimizer.step()
            self.clip_discriminator()
        return loss.detach(), acc

    # -- scores --------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, batch: Mapping[str, Any], out: TupleEmbeddings | None = None
              ) -> dict[str, Tensor]:
        """Candidate scores ``(B, k)`` (higher = more likely the query's identity).

        - ``cosine``: cosine similarity of query and candidate embeddings (after the CCA
          back-end when ``model.backend: cca``: :meth:`scoring_space`);
        - ``match``: matching-classifier logits (AML Eq. 6), when there is one for this ``k``;
        - ``verify``: verification logit margin ``same - different`` (AML Eq. 7), per pair;
        - ``distance``: minus the retrieval distance (AML Eq. 8);
        - ``head``: the task head's score: ``match`` if available, else ``verify`` for ``k = 1``
          (verification pairs) and ``distance`` for ``k > 1``, else any head, else ``cosine``.

        Call in eval mode (the VAE then uses ``mu`` and no noise).
        """
        out = out if out is not None else self.encode(batch)
        query, candidates = out.query, out.candidates
        scores = self.pair_scores(*out.pairs())
        if self.match_head is not None and self.match_head.supports(out.k):
            scores["match"] = self.match_head(query, candidates)
        order = ("match", "verify", "distance") if out.k == 1 else ("match", "distance", "verify")
        scores["head"] = next((scores[n] for n in order if n in scores), scores["cosine"])
        return scores

    def scoring_space(self, voice: Tensor, face: Tensor) -> tuple[Tensor, Tensor]:
        """The embeddings ``cosine`` compares: ``h`` itself, or its image under the fitted CCA
        back-end (``model.backend: cca``; identity until :meth:`CCABackend.fit`)."""
        if self.backend is None:
            return voice, face
        return self.backend.project("voice", voice), self.backend.project("face", face)

    @torch.no_grad()
    def pair_scores(self, voice: Tensor, face: Tensor) -> dict[str, Tensor]:
        """Scores of (voice, face) embedding pairs ``(..., d)`` (broadcast): ``cosine``, and
        ``verify`` (AML Eq. 7) and ``distance`` (minus AML Eq. 8's distance) when those heads
        exist. For verification pairs and retrieval galleries built from :meth:`embed`."""
        voice, face = torch.broadcast_tensors(voice, face)
        scores = {"cosine": F.cosine_similarity(*self.scoring_space(voice, face), dim=-1)}
        if self.verify_head is not None:
            logits = self.verify_head(voice, face)  # (..., 2)
            scores["verify"] = logits[..., 1] - logits[..., 0]
        if self.retrieval_head is not None:
            scores["distance"] = -self.retrieval_head(voice, face)
        return scores

    # -- optimisation ------------------------------------------------------------------------------
    def ddp_ignore_names(self) -> list[str]:
        """Parameter names DistributedDataParallel must leave alone: the discriminator's, which
        :meth:`discriminator_update` trains (and averages over processes) outside ``forward``.

        ``DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model,
        model.ddp_ignore_names())`` before wrapping, then ``DistributedDataParallel(model,
        find_unused_parameters=True)`` (matching heads of other ``k`` are unused in a batch).
        """
        if self.discriminator is None:
            return []
        return [f"discriminator.{n}" for n, _ in self.discriminator.named_parameters()]

    def param_groups(self, lr: LearningRates | None = None
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Optimiser groups ``(generator_groups, discriminator_groups)`` covering every trainable
        parameter exactly once. Each group: ``name``, ``params``, ``lr`` and ``lr_end`` (the
        final rate of AML's logarithmic decay; equal to ``lr`` for constant groups)."""
        lr = lr or LearningRates()
        rates = {"branches": (lr.base, lr.base_end), "generator": (lr.base, lr.base_end),
                 "private": ((lr.base, lr.base_end) if lr.private is None
                             else (lr.private, lr.private)), "heads": (lr.base, lr.base_end),
                 "vae": (lr.vae, lr.vae), "gender": (lr.gender, lr.gender),
                 "nation": (lr.nation, lr.nation),
                 "discriminator": (lr.discriminator, lr.discriminator)}
        grouped: dict[str, list[nn.Parameter]] = {}
        for name, child in self.named_children():
            if name not in PARAM_GROUP:
                raise RuntimeError(f"module {name!r} has no optimiser group "
                                   f"(add it to PARAM_GROUP)")
            params = [p for p in child.parameters() if p.requires_grad]
            grouped.setdefault(PARAM_GROUP[name], []).extend(params)
        groups = [{"name": g, "params": ps, "lr": rates[g][0], "lr_end": rates[g][1]}
                  for g, ps in grouped.items() if ps]
        return ([g for g in groups if g["name"] != "discriminator"],
                [g for g in groups if g["name"] == "discriminator"])


def _average_gradients(params) -> None:
    """Average gradients over torch.distributed processes (no-op when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad.div_(dist.get_world_size())


def _glorot(module: nn.Module) -> None:
    """Glorot (Xavier) uniform weights and zero biases (AML III-G)."""
    if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def build_model(params: Mapping[str, Any], dims: InputDims | None = None) -> AVMatchNet:
    """The model of a params dict (its ``model`` section)."""
    return AVMatchNet(ModelConfig.from_params(params), dims)


# -- timm registry -------------------------------------------------------------------------------
PRESETS: dict[str, dict[str, Any]] = {
    "avmatch_p2vanet": {},  # the ModelConfig defaults: full P2VANet
    "avmatch_aml": {"vae": "none", "private": "none", "public": "none", "loss_weighting": "aml"},
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> AVMatchNet:
    if pretrained:
        raise ValueError(f"{variant} has no pretrained weights; load a training checkpoint")
    for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
        kwargs.pop(key, None)
    dims = kwargs.pop("dims", None)
    if isinstance(dims, Mapping):
        dims = build(InputDims, dims, name="dims")
    cfg = build(ModelConfig, {**PRESETS[variant], **kwargs}, name=variant)
    return AVMatchNet(cfg, dims)


@register_model
def avmatch_p2vanet(pretrained: bool = False, **kwargs: Any) -> AVMatchNet:
    """Full P2VANet: VAE on both modalities, cross-transformer, gender + nationality heads,
    WGAN adversarial learning and the lifted structured loss, plus the two terms beyond Eq. 18
    that are on by default (``identity_weight=0, nce_weight=0`` leaves them out). ``kwargs``:
    ModelConfig fields and ``dims`` (an :class:`InputDims` or a mapping)."""
    return _create("avmatch_p2vanet", pretrained, **kwargs)


@register_model
def avmatch_aml(pretrained: bool = False, **kwargs: Any) -> AVMatchNet:
    """AML baseline: branches, generator, WGAN discriminator, lifted structured loss and task
    heads, weighted by AML Eq. 9 (``beta``, ``gamma``), plus the defaults' identity softmax and
    InfoNCE terms (``identity_weight=0, nce_weight=0`` for AML's loss alone)."""
    return _create("avmatch_aml", pretrained, **kwargs)
