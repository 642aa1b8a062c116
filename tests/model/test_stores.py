"""model.stores: random (training) and fixed (evaluation) crops, tiling short clips; batched reads."""

from __future__ import annotations

import multiprocessing as mp
import pickle
from pathlib import Path

import numpy as np
import pytest

from model.stores import FaceStore, SpectrogramStore, fixed_starts, view_positions
from pipeline.spectrograms import SpectrogramConfig, SpectrogramWriter, run
from tests.pipeline.audio_corpus import good_corpus, write_manifest

N_BINS = 8
FRAMES = 10
LENGTHS = {"id10001/a/00001": 37, "id10001/b/00001": 4, "id10002/c/00001": 10}


def ramp(length: int, base: float) -> np.ndarray:
    """Rows whose every value encodes ``base + frame index`` (exact in float16 below 2048)."""
    return np.repeat((base + np.arange(length, dtype=np.float32))[:, None], N_BINS, axis=1)  # (T, F)


@pytest.fixture(scope="module")
def store_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("store") / "spectrograms.h5"
    cfg = SpectrogramConfig(n_bins=N_BINS, frames=FRAMES, chunk_frames=4)
    writer = SpectrogramWriter(path, cfg)
    for k, (uid, length) in enumerate(LENGTHS.items()):
        writer.add(uid, ramp(length, 100.0 * k).astype(np.float16), length * 0.024)
    writer.finish({"manifest_rows": len(LENGTHS)})
    writer.close()
    return path


def starts_of(crop: np.ndarray) -> np.ndarray:
    """Frame indices a ramp crop came from (frequency-major input)."""
    assert np.all(crop == crop[:1])  # every bin of a column holds the same frame index
    return crop[0] % 100


def test_index_and_full_utterance(store_path: Path) -> None:
    store = SpectrogramStore(store_path)
    assert len(store) == 3 and list(store.ids) == list(LENGTHS) and "id10001/b/00001" in store
    assert store.frames == FRAMES and store.n_bins == N_BINS
    full = store.full("id10001/a/00001")
    assert full.shape == (N_BINS, 37) and full.dtype == np.float32
    np.testing.assert_array_equal(full[3], np.arange(37))


def test_random_crop_is_a_contiguous_window_within_the_clip(store_path: Path) -> None:
    store = SpectrogramStore(store_path)
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(300):
        crop = store.random_crop("id10001/a/00001", rng)
        assert crop.shape == (N_BINS, FRAMES) and crop.dtype == np.float32
        frames = starts_of(crop)
        np.testing.assert_array_equal(frames, frames[0] + np.arange(FRAMES))
        starts.add(int(frames[0]))
    assert starts == set(range(37 - FRAMES + 1))  # every start, none past the end
    a = store.random_crop("id10001/a/00001", np.random.default_rng(7))
    b = store.random_crop("id10001/a/00001", np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_short_clip_is_tiled_from_a_random_start(store_path: Path) -> None:
    store = SpectrogramStore(store_path)
    rng = np.random.default_rng(1)
    starts = set()
    for _ in range(100):
        frames = starts_of(store.random_crop("id10001/b/00001", rng))
        np.testing.assert_array_equal(frames, (frames[0] + np.arange(FRAMES)) % 4)
        starts.add(int(frames[0]))
    assert starts == {0, 1, 2, 3}


def test_fixed_crop_is_deterministic_centre_or_start(store_path: Path) -> None:
    store = SpectrogramStore(store_path)
    centre = starts_of(store.fixed_crop("id10001/a/00001"))
    np.testing.assert_array_equal(centre, 13 + np.arange(FRAMES))  # (37 - 10) // 2 = 13
    np.testing.assert_array_equal(store.fixed_crop("id10001/a/00001"), store.fixed_crop("id10001/a/00001"))
    np.testing.assert_array_equal(starts_of(store.fixed_crop("id10001/a/00001", "start")), np.arange(FRAMES))
    np.testing.assert_array_equal(starts_of(store.fixed_crop("id10001/b/00001")), np.arange(FRAMES) % 4)
    np.testing.assert_array_equal(starts_of(store.fixed_crop("id10002/c/00001")), np.arange(FRAMES))
    with pytest.raises(ValueError, match="position"):
        store.fixed_crop("id10001/a/00001", "end")


def test_fixed_crops_at_fractions_span_the_clip(store_path: Path) -> None:
    """A numeric position places the crop at that fraction of the room a long clip leaves (0:
    first frame, 1: the crop ends on the last frame); a short clip is tiled from its start."""
    store = SpectrogramStore(store_path)
    uid = "id10001/a/00001"  # 37 frames: starts 0..27
    for position, start in ((0.0, 0), (0.5, 13), (1.0, 27), (1 / 3, 9), (2 / 3, 18)):
        np.testing.assert_array_equal(starts_of(store.fixed_crop(uid, position)),
                                      start + np.arange(FRAMES))
    np.testing.assert_array_equal(starts_of(store.fixed_crop("id10001/b/00001", 1.0)),
                                  np.arange(FRAMES) % 4)
    assert view_positions(1) == (0.5,) and view_positions(3) == (0.0, 0.5, 1.0)
    np.testing.assert_array_equal(fixed_starts(np.array([37, 4, 10]), FRAMES, "center"), [13, 0, 0])
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            store.fixed_crop(uid, bad)
    with pytest.raises(ValueError, match="crops"):
        view_positions(0)


def test_crop_length_can_be_overridden(store_path: Path) -> None:
    store = SpectrogramStore(store_path, frames=50)
    crop = store.fixed_crop("id10001/a/00001")
    assert crop.shape == (N_BINS, 50)
    np.testing.assert_array_equal(starts_of(crop), np.arange(50) % 37)


def _read_in_child(store: SpectrogramStore, queue: mp.Queue) -> None:
    queue.put(store.fixed_crop("id10002/c/00001").sum())


def test_store_survives_pickling_and_fork(store_path: Path) -> None:
    store = SpectrogramStore(store_path)
    expected = store.fixed_crop("id10002/c/00001").sum()  # opens the file in the parent
    clone = pickle.loads(pickle.dumps(store))
    assert clone.fixed_crop("id10002/c/00001").sum() == expected
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_read_in_child, args=(store, queue))
    child.start()
    child.join(30)
    assert child.exitcode == 0 and queue.get(timeout=5) == expected
    store.close()


def test_reads_a_store_written_by_the_stage(tmp_path: Path) -> None:
    rows = good_corpus(tmp_path / "raw", n=3, seconds=(1.0, 4.0))
    manifest = write_manifest(tmp_path / "m", rows)
    run(tmp_path / "raw", manifest, tmp_path / "f", SpectrogramConfig(workers=1))
    with SpectrogramStore(tmp_path / "f" / "spectrograms.h5") as store:
        assert store.params["preset"] == "speaker16k"
        short, long = rows[0]["id"], rows[1]["id"]  # 1 s = 42 frames, 4 s = 167 frames
        assert store.length(short) == 42 and store.length(long) == 167
        for uid in (short, long):
            train = store.random_crop(uid, np.random.default_rng(0))
            test = store.fixed_crop(uid)
            assert train.shape == test.shape == (224, 125)
            assert np.isfinite(train).all() and np.isfinite(test).all()
        np.testing.assert_array_equal(store.fixed_crop(short)[:, 42:84], store.full(short))
        np.testing.assert_array_equal(store.fixed_crop(long), store.full(long)[:, 21:146])


def test_get_many_matches_single_reads_in_any_order_with_repeats(store_path: Path) -> None:
    store = SpectrogramStore(store_path)
    order = [2, 0, 1, 0]  # unsorted, with a repeat: one HDF5 read of the sorted unique rows
    batch = store.get_many(order)
    assert batch.shape == (4, N_BINS, FRAMES) and batch.dtype == np.float32
    for row, i in zip(batch, order, strict=True):
        np.testing.assert_array_equal(row, store.fixed_crop(store.ids[i]))
    assert store.index("id10002/c/00001") == 2
    with pytest.raises(KeyError):
        store.index("id99999/x/00001")


def test_get_many_random_crops_are_reproducible_and_in_range(store_path: Path) -> None:
    store = SpectrogramStore(store_path)
    a = store.get_many([0, 1, 2], rng=np.random.default_rng(5))
    b = store.get_many([0, 1, 2], rng=np.random.default_rng(5))
    np.testing.assert_array_equal(a, b)
    for crop, length in zip(a, LENGTHS.values(), strict=True):
        frames = starts_of(crop)
        step = np.diff(frames) % length
        assert np.all(step == 1 % length)  # consecutive frames, wrapping inside short clips
        assert frames.max() < length


def write_faces(path: Path, n: int, size: int) -> np.ndarray:
    import h5py

    images = (np.arange(n * size * size * 3) % 251).astype(np.uint8).reshape(n, size, size, 3)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", data=images, chunks=(1, size, size, 3))
        f.create_dataset("ids", data=[f"id1000{i}/v/000000{i}".encode() for i in range(n)])
        f.attrs["size"] = size
        f.attrs["params"] = "{}"
    return images


def _face_sum_in_child(store: FaceStore, queue: mp.Queue) -> None:
    queue.put(int(store.get_many([3, 1]).sum()))


def test_face_store_batches_and_survives_pickling_and_fork(tmp_path: Path) -> None:
    images = write_faces(tmp_path / "faces.h5", n=5, size=6)
    store = FaceStore(tmp_path / "faces.h5")
    assert len(store) == 5 and store.size == 6 and store.index(store.ids[4]) == 4
    np.testing.assert_array_equal(store.get_many([3, 1, 3]), images[[3, 1, 3]])
    np.testing.assert_array_equal(store.get(store.ids[2]), images[2])
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.read(1, 3), images[1:3])
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_face_sum_in_child, args=(store, queue))
    child.start()
    child.join(30)
    assert child.exitcode == 0 and queue.get(timeout=5) == int(images[[3, 1]].sum())
    store.close()


def test_importing_the_stores_does_not_import_torch_or_timm() -> None:
    import subprocess
    import sys

    code = ("import sys, model.stores; "
            "print(int('torch' in sys.modules), int('timm' in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "0"]
