"""Shared stage helpers: config building, atomic writes, rejects, the process pool, probes."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, dataclass
from pathlib import Path

import polars as pl
import pytest

from pipeline.common.config import ConfigError, build, from_params
from pipeline.common.io import atomic_dir, atomic_file, output_group, write_json
from pipeline.common.parallel import imap_ordered, resolve_workers
from pipeline.common.probe import BadInput, probe_audio, probe_image
from pipeline.common.rejects import Rejects, TooManyRejects
from tests.vox_tree import write_jpg, write_wav


@dataclass(frozen=True)
class Demo:
    size: int = 1
    rate: float = 0.5
    names: tuple[str, ...] = ("a",)
    path: str | None = None


def test_build_converts_and_rejects_unknown_keys(tmp_path: Path) -> None:
    cfg = build(Demo, {"size": 3, "rate": 2, "names": ["x", "y"]})
    assert cfg == Demo(size=3, rate=2.0, names=("x", "y"))
    assert isinstance(cfg.rate, float) and isinstance(cfg.names, tuple)
    with pytest.raises(ConfigError, match="unknown key.*'demo'.*sizee"):
        build(Demo, {"sizee": 3}, name="demo")
    params = tmp_path / "params.yaml"
    params.write_text("demo:\n  size: 7\nother: {}\n")
    assert from_params(Demo, params, "demo").size == 7
    assert from_params(Demo, params, "missing") == Demo()
    with pytest.raises(FrozenInstanceError):
        cfg.size = 2  # type: ignore[misc]


def test_atomic_file_only_replaces_on_success(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("interrupted")
    assert target.read_text().strip().startswith("{") and '"a": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    assert target.stat().st_mode & 0o044 == 0o044  # readable by others, like a plain open()


def test_atomic_dir_swaps_whole_directory(tmp_path: Path) -> None:
    target = tmp_path / "d"
    with atomic_dir(target) as tmp:
        (tmp / "x").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "y").write_text("2")
        raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["x"]
    with atomic_dir(target) as tmp:
        (tmp / "z").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_output_group_commits_all_or_nothing(tmp_path: Path) -> None:
    (tmp_path / "store.bin").write_bytes(b"old store")
    (tmp_path / "summary.json").write_text("old summary")
    (tmp_path / "live").mkdir()
    (tmp_path / "live" / "metrics.json").write_text("old metrics")
    with pytest.raises(TooManyRejects), output_group() as outputs:
        outputs.file(tmp_path / "store.bin").write_bytes(b"new store")
        outputs.file(tmp_path / "summary.json").write_text("new summary")
        outputs.file(tmp_path / "rejects.parquet").write_bytes(b"new rejects")
        (outputs.dir(tmp_path / "live") / "metrics.json").write_text("new metrics")
        raise TooManyRejects("checked after every output is written")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live", "store.bin", "summary.json"]
    assert (tmp_path / "store.bin").read_bytes() == b"old store"
    assert (tmp_path / "summary.json").read_text() == "old summary"
    assert [p.name for p in (tmp_path / "live").iterdir()] == ["metrics.json"]
    assert (tmp_path / "live" / "metrics.json").read_text() == "old metrics"
    with output_group() as outputs:
        outputs.file(tmp_path / "store.bin").write_bytes(b"new store")
        outputs.file(tmp_path / "rejects.parquet").write_bytes(b"new rejects")
        (outputs.dir(tmp_path / "live") / "metrics.json").write_text("new metrics")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["live", "rejects.parquet", "store.bin",
                                                          "summary.json"]
    assert (tmp_path / "store.bin").read_bytes() == b"new store"
    assert (tmp_path / "live" / "metrics.json").read_text() == "new metrics"
    assert (tmp_path / "rejects.parquet").stat().st_mode & 0o044 == 0o044


def test_rejects_table_and_limit(tmp_path: Path) -> None:
    rejects = Rejects("demo")
    rejects.add("empty", id="a", path="a.wav")
    rejects.add("unexpected_format", id="b", path="b.wav", kept=True)
    rejects.write(tmp_path / "r.parquet")
    frame = pl.read_parquet(tmp_path / "r.parquet")
    assert frame.columns == ["stage", "id", "path", "reason", "detail", "kept"]
    assert frame["reason"].to_list() == ["empty", "unexpected_format"]
    assert rejects.counts() == {"empty": 1, "unexpected_format": 1}
    rejects.check(total=2, max_fraction=0.5)  # one dropped of two: allowed
    with pytest.raises(TooManyRejects, match="1 of 2 inputs rejected.*a.wav: empty"):
        rejects.check(total=2, max_fraction=0.1)
    rejects.add("empty", id="c", path="c.wav")
    rejects.add("silent", id="d", path="d.wav")
    with pytest.raises(TooManyRejects, match=r"by reason: \{'empty': 2, 'silent': 1\}\. First"):
        rejects.check(total=4, max_fraction=0.1)  # the kept row is not counted


def _square(x: int) -> int:
    return x * x


def test_imap_ordered_keeps_order_across_workers() -> None:
    expected = [x * x for x in range(50)]
    assert list(imap_ordered(_square, range(50), workers=1)) == expected
    assert list(imap_ordered(_square, iter(range(50)), workers=2, in_flight=3)) == expected
    for chunksize in (3, 7, 100):
        assert list(imap_ordered(_square, range(50), workers=2, chunksize=chunksize)) == expected
    assert resolve_workers(0) >= 1 and resolve_workers(3) == 3


def test_probes_on_real_bytes(tmp_path: Path) -> None:
    info = probe_audio(write_wav(tmp_path / "a.wav", seconds=0.5, rate=22050, channels=2))
    assert (info.sample_rate, info.channels) == (22050, 2) and info.duration == pytest.approx(0.5)
    image = probe_image(write_jpg(tmp_path / "a.jpg", size=20))
    assert (image.format, image.width, image.height) == ("jpeg", 20, 20)
    jpeg = (tmp_path / "a.jpg").read_bytes()
    app = b"\xff\xe1" + (40000).to_bytes(2, "big") + b"\0" * 39998  # a 40 kB APP1 block
    (tmp_path / "exif.jpg").write_bytes(jpeg[:2] + app + app + jpeg[2:])  # SOF beyond 64 KiB
    assert probe_image(tmp_path / "exif.jpg").width == 20
    with pytest.raises(BadInput, match="truncated"):
        (tmp_path / "cut.jpg").write_bytes((jpeg[:2] + app + app + jpeg[2:])[:-10])
        probe_image(tmp_path / "cut.jpg")
    (tmp_path / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 4)
    with pytest.raises(BadInput) as err:
        probe_image(tmp_path / "b.png")
    assert err.value.reason == "truncated"
