"""Where things live under the data root, shared by synthetic and real data."""

from __future__ import annotations

import json
import os
from pathlib import Path

SOURCE_FILE = "source.json"

VOX1_META = "voxceleb1/vox1_meta.csv"
VOX1_WAV = "voxceleb1/wav"
VOX1_FACES = "voxceleb1/unzippedFaces"
VOX1_META_HEADER = ("VoxCeleb1 ID", "VGGFace1 ID", "Gender", "Nationality", "Set")

CELEBA = "celeba"
CELEBA_IMAGES = "celeba/img_align_celeba"
CELEBA_ATTR = "celeba/list_attr_celeba.txt"
CELEBA_IDENTITY = "celeba/identity_CelebA.txt"
CELEBA_PARTITION = "celeba/list_eval_partition.txt"


def resolve_root(raw_dir: str | os.PathLike) -> Path:
    """Return the data root for ``raw_dir``.

    ``acquire`` with ``data.source: local`` writes only ``source.json`` (``{"root": ...}``) so a
    user's tree is read in place; otherwise the data lives in ``raw_dir`` itself.
    """
    raw = Path(raw_dir)
    pointer = raw / SOURCE_FILE
    if pointer.is_file():
        root = json.loads(pointer.read_text(encoding="utf-8")).get("root")
        if root:
            return Path(root).expanduser().resolve()
    return raw.resolve()
