"""model/checkpoint.py: safetensors + JSON round trips, exact resume, refusal of bad files."""

from __future__ import annotations

import hashlib
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from model.checkpoint import (
    META,
    TENSORS,
    CheckpointError,
    load_checkpoint,
    load_model,
    load_resume,
    model_meta,
    resume_meta,
    save_checkpoint,
    save_model,
    save_resume,
)


class Tiny(nn.Module):
    """A small net with a buffer, dropout (torch RNG) and an int parameter-free buffer."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Dropout(0.3), nn.Linear(width, 3))
        self.norm = nn.BatchNorm1d(3)
        self.register_buffer("counter", torch.zeros((), dtype=torch.int64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.counter += 1
        return self.norm(self.body(x))


def build(seed: int) -> tuple[Tiny, dict[str, torch.optim.Optimizer], dict, np.random.Generator]:
    torch.manual_seed(seed)
    net = Tiny()
    opts = {"main": torch.optim.Adam(net.body.parameters(), lr=1e-2, betas=(0.9, 0.99),
                                     weight_decay=5e-4),
            "norm": torch.optim.Adam(net.norm.parameters(), lr=5e-3)}
    scheds = {"main": torch.optim.lr_scheduler.ExponentialLR(opts["main"], gamma=0.9)}
    return net, opts, scheds, np.random.default_rng(seed)


def train(net: Tiny, opts: dict, scheds: dict, rng: np.random.Generator, steps: int) -> list[float]:
    """Steps that use every RNG a trainer uses: torch (data, dropout), numpy and Python."""
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 4) + torch.from_numpy(rng.normal(size=(16, 4))).float()
        target = torch.full((16,), random.randrange(3))
        loss = nn.functional.cross_entropy(net(x), target)
        for opt in opts.values():
            opt.zero_grad()
        loss.backward()
        for opt in opts.values():
            opt.step()
        for sched in scheds.values():
            sched.step()
        losses.append(loss.item())
    return losses


def test_model_round_trip_is_exact_and_json_holds_the_meta(tmp_path: Path) -> None:
    net, *_ = build(0)
    meta = {"model": {"embed_dim": 128, "strides": ((2, 2), (1, 1))}, "params": {"lambda1": 1.5},
            "data": {"spec_norm": None, "labels": {"nations": ["UK", "other"]}},
            "selection": {"selected_on": "val", "metric": "val.v2f.match.k2.U.acc",
                          "value": np.float64(0.75), "epoch": 3}}
    save_model(tmp_path / "best", net, meta)
    assert sorted(p.name for p in (tmp_path / "best").iterdir()) == [META, TENSORS]
    record = json.loads((tmp_path / "best" / META).read_text())
    assert record["meta"]["selection"] == {"selected_on": "val", "metric": "val.v2f.match.k2.U.acc",
                                           "value": 0.75, "epoch": 3}
    other, *_ = build(1)
    loaded = load_model(tmp_path / "best", other)
    assert loaded["model"]["strides"] == [[2, 2], [1, 1]] and loaded["data"]["spec_norm"] is None
    for (name, a), (_, b) in zip(net.state_dict().items(), other.state_dict().items(), strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b), name
    tensors, meta_only = load_checkpoint(tmp_path / "best")
    assert set(tensors) == set(net.state_dict()) and meta_only == loaded == model_meta(tmp_path / "best")


def test_same_state_gives_identical_bytes(tmp_path: Path) -> None:
    for name in ("a", "b"):
        save_model(tmp_path / name, build(0)[0], {"epoch": 1})
    for file in (META, TENSORS):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes()


def test_adam_state_round_trips(tmp_path: Path) -> None:
    net, opts, scheds, rng = build(0)
    train(net, opts, scheds, rng, 3)
    save_resume(tmp_path / "last", model=net, optimizers=opts, schedulers=scheds, epoch=1, step=3,
                rngs={"data": rng}, extra={"best": 0.5, "history": [1.0, math.inf]})
    net2, opts2, scheds2, rng2 = build(7)
    state = load_resume(tmp_path / "last", model=net2, optimizers=opts2, schedulers=scheds2,
                        rngs={"data": rng2})
    assert (state.epoch, state.step) == (1, 3)
    assert resume_meta(tmp_path / "last") == state.meta == {}
    assert state.extra == {"best": 0.5, "history": [1.0, math.inf]}
    for name in opts:
        a, b = opts[name].state_dict(), opts2[name].state_dict()
        assert a["param_groups"] == b["param_groups"]
        assert a["state"].keys() == b["state"].keys()
        for pid, entry in a["state"].items():
            for key, value in entry.items():
                assert torch.equal(value, b["state"][pid][key]), (name, pid, key)
    assert scheds2["main"].state_dict() == scheds["main"].state_dict()
    assert rng2.bit_generator.state == rng.bit_generator.state


def test_resumed_run_continues_with_identical_results(tmp_path: Path) -> None:
    random.seed(0)
    net, opts, scheds, rng = build(0)
    straight = train(net, opts, scheds, rng, 6)

    random.seed(0)
    first, opts1, scheds1, rng1 = build(0)
    before = train(first, opts1, scheds1, rng1, 3)
    save_resume(tmp_path / "last", model=first, optimizers=opts1, schedulers=scheds1, epoch=0,
                step=3, rngs={"data": rng1}, meta={"fingerprint": "abc", "best": -math.inf})
    assert resume_meta(tmp_path / "last") == {"fingerprint": "abc", "best": -math.inf}
    random.seed(123)  # a new process: every RNG elsewhere
    resumed, opts2, scheds2, rng2 = build(99)
    torch.manual_seed(1234)
    state = load_resume(tmp_path / "last", model=resumed, optimizers=opts2, schedulers=scheds2,
                        rngs={"data": rng2})
    after = train(resumed, opts2, scheds2, rng2, 6 - state.step)
    assert before + after == straight
    for (name, a), (_, b) in zip(net.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_corrupt_or_mismatched_files_are_refused(tmp_path: Path) -> None:
    save_model(tmp_path / "a", build(0)[0], {"epoch": 1})
    save_model(tmp_path / "b", build(1)[0], {"epoch": 2})
    # the JSON of one checkpoint with the tensors of another
    (tmp_path / "a" / TENSORS).write_bytes((tmp_path / "b" / TENSORS).read_bytes())
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_model(tmp_path / "a")
    # truncated tensors with a matching hash (re-recorded): the safetensors parser refuses them
    data = (tmp_path / "b" / TENSORS).read_bytes()[:40]
    (tmp_path / "b" / TENSORS).write_bytes(data)
    record = json.loads((tmp_path / "b" / META).read_text())
    record["tensors"]["sha256"] = hashlib.sha256(data).hexdigest()
    (tmp_path / "b" / META).write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="corrupt safetensors"):
        load_model(tmp_path / "b")
    (tmp_path / "b" / META).write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt JSON"):
        load_model(tmp_path / "b")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_model(tmp_path / "missing")


def test_wrong_model_or_kind_is_refused_with_names(tmp_path: Path) -> None:
    net, opts, scheds, rng = build(0)
    save_model(tmp_path / "m", net, {})
    wider = Tiny(width=16)
    with pytest.raises(CheckpointError, match="shape mismatch"):
        load_model(tmp_path / "m", wider)
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path / "m", nn.Sequential(nn.Linear(4, 8)))
    with pytest.raises(CheckpointError, match="'model' checkpoint, expected 'resume'"):
        load_resume(tmp_path / "m", model=net, optimizers=opts)
    save_resume(tmp_path / "r", model=net, optimizers=opts, epoch=0, step=0)
    with pytest.raises(CheckpointError, match="'resume' checkpoint, expected 'model'"):
        load_model(tmp_path / "r")
    with pytest.raises(CheckpointError, match="optimizers"):
        load_resume(tmp_path / "r", model=net, optimizers={"main": opts["main"]})


def test_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    net = build(0)[0]
    save_model(tmp_path / "best", net, {"epoch": 1})
    with pytest.raises(CheckpointError, match="cannot store"):
        save_model(tmp_path / "best", net, {"epoch": 2, "bad": object()})
    with pytest.raises(CheckpointError, match="cannot store"):
        save_checkpoint(tmp_path / "best", net.state_dict(), {"weights": torch.ones(2)})
    assert load_model(tmp_path / "best") == {"epoch": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]  # no temporary left behind
