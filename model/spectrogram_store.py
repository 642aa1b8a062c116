"""Reader for ``spectrograms.h5`` (written by ``pipeline.spectrograms``): numpy in, numpy out.

The store keeps each utterance once, time-major (``(frames_i, n_bins)`` rows of one float16
dataset, located by ``offsets``). The data loader asks for model-sized crops, returned
frequency-major as float32 ``(n_bins, frames)``, i.e. the papers' 224 x 125 input:

- training: :meth:`SpectrogramStore.random_crop`, a random ``frames``-long window; a clip
  shorter than ``frames`` is tiled (repeated end to end) from a random start, so every crop
  is full length and no zero padding reaches the model;
- evaluation: :meth:`SpectrogramStore.fixed_crop`, a deterministic window (centre by
  default, or start), tiled from its start when the clip is short.

The HDF5 file is opened lazily and reopened after a fork, so one store object can be handed to
DataLoader worker processes. Torch is not needed; wrap the arrays with ``torch.from_numpy``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

POSITIONS = ("center", "start")


class SpectrogramStore:
    """Random and fixed crops of the utterances in a spectrogram HDF5 store."""

    def __init__(self, path: str | os.PathLike, frames: int | None = None) -> None:
        import h5py

        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            self.params: dict[str, Any] = json.loads(f.attrs["params"])
            self.ids: list[str] = [s.decode("utf-8") for s in f["ids"][:]]
            self.offsets: np.ndarray = f["offsets"][:].astype(np.int64)
            self.durations: np.ndarray = f["durations"][:]
        self.frames = int(frames or self.params["frames"])
        self.n_bins = int(self.params["n_bins"])
        self._index = {uid: i for i, uid in enumerate(self.ids)}
        self._file: Any = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, uid: object) -> bool:
        return uid in self._index

    def __enter__(self) -> SpectrogramStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None  # h5py handles do not cross processes
        return state

    def close(self) -> None:
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file, self._pid = None, None

    def _data(self) -> Any:
        if self._file is None or self._pid != os.getpid():
            import h5py

            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file["data"]

    def length(self, uid: str) -> int:
        """Number of STFT frames stored for ``uid``."""
        i = self._index[uid]
        return int(self.offsets[i + 1] - self.offsets[i])

    def _rows(self, uid: str, start: int, count: int) -> np.ndarray:
        """Rows ``start..start+count`` of ``uid`` as float32 ``(count, n_bins)``."""
        base = int(self.offsets[self._index[uid]])
        return self._data()[base + start: base + start + count].astype(np.float32)

    def full(self, uid: str) -> np.ndarray:
        """The whole utterance, float32 ``(n_bins, frames_i)``."""
        return np.ascontiguousarray(self._rows(uid, 0, self.length(uid)).T)  # (T, F) -> (F, T)

    def _crop(self, uid: str, start: int) -> np.ndarray:
        """``frames`` columns from ``start``, wrapping around a clip shorter than ``frames``."""
        length = self.length(uid)
        if length >= self.frames:
            rows = self._rows(uid, start, self.frames)  # (frames, F)
        else:
            whole = self._rows(uid, 0, length)  # (T, F)
            rows = whole[(start + np.arange(self.frames)) % length]  # tiled: (frames, F)
        return np.ascontiguousarray(rows.T)  # (frames, F) -> (F, frames)

    def random_crop(self, uid: str, rng: np.random.Generator) -> np.ndarray:
        """Training crop: float32 ``(n_bins, frames)`` from a start drawn with ``rng``."""
        length = self.length(uid)
        high = length - self.frames + 1 if length >= self.frames else length
        return self._crop(uid, int(rng.integers(0, high)))

    def fixed_crop(self, uid: str, position: str = "center") -> np.ndarray:
        """Evaluation crop: float32 ``(n_bins, frames)``, the same on every call."""
        if position not in POSITIONS:
            raise ValueError(f"position must be one of {POSITIONS}, got {position!r}")
        length = self.length(uid)
        start = (length - self.frames) // 2 if position == "center" and length > self.frames else 0
        return self._crop(uid, start)
