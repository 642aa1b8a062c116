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
# VGGFace (v1) with VoxCeleb1 audio: files/<Name>.txt lists, images/<Name>/<id>.jpg
VOX1_VGGFACE = "voxceleb1/vggface"
VOX1_VGGFACE_LISTS = "voxceleb1/vggface/files"
VOX1_VGGFACE_IMAGES = "voxceleb1/vggface/images"
VGGFACE_LIST_COLUMNS = ("id", "url", "left", "top", "right", "bottom", "pose",
                        "detection_score", "curation")

# VoxCeleb2 + VGGFace2
VOX2_META = "voxceleb2/vox2_meta.csv"
VOX2_META_HEADER = ("VoxCeleb2 ID", "VGGFace2 ID", "Gender", "Set")
VOX2_AAC_DIRS = ("voxceleb2/aac", "voxceleb2/dev/aac", "voxceleb2/test/aac")
VGGFACE2 = "voxceleb2/vggface2"
VGGFACE2_META = "voxceleb2/vggface2/identity_meta.csv"
VGGFACE2_SPLITS = ("train", "test")

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
