"""Where things live under the data root, shared by synthetic and real data."""

from __future__ import annotations

import json
import os
from collections.abc import Collection
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


class TreeError(ValueError):
    """The data tree does not hold what its layout needs: a metadata file, a modality, or
    enough identities for every split. The message names the expected path and, when one exists,
    the nearest folder or file of that name found under the root."""


def find_named(root: Path, name: str, *, skip: Collection[str] = (), max_depth: int = 4,
               max_dirs: int = 20_000) -> str | None:
    """The shallowest path under ``root`` named ``name`` (case-insensitive), relative to it.

    Breadth first, in name order, at most ``max_depth`` levels deep and ``max_dirs`` folders read,
    so a huge tree costs little; hidden entries and the paths in ``skip`` are not reported.
    """
    level, seen = [root], 0
    for _ in range(max_depth):
        found, deeper = [], []
        for folder in level:
            seen += 1
            if seen > max_dirs:
                return None
            try:
                with os.scandir(folder) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                rel = Path(entry.path).relative_to(root).as_posix()
                if entry.name.lower() == name.lower() and rel not in skip:
                    found.append(rel)
                if entry.is_dir():
                    deeper.append(Path(entry.path))
        if found:
            return found[0]
        level = deeper
    return None


def misplaced_hint(root: Path, *expected: str) -> str:
    """Where the first of ``expected`` (paths relative to ``root``, any one of which would do)
    might be instead, as one sentence naming the nearest match found under the root.

    E.g. "Found `unzippedFaces/` at the root: expected under `voxceleb1/`."
    """
    for rel in expected:
        want = Path(rel)
        found = find_named(root, want.name, skip=expected)
        if found is None:
            continue
        got = Path(found)
        slash = "/" if (root / found).is_dir() else ""
        where = "at the root" if got.parent == Path(".") else f"under `{got.parent.as_posix()}/`"
        parent = want.parent.as_posix()
        place = f"expected under `{parent}/`" if parent != "." else "expected at the root"
        return f"Found `{got.name}{slash}` {where}: {place}."
    names = " or ".join(f"`{Path(rel).name}`" for rel in dict.fromkeys(expected))
    return f"Nothing named {names} within 4 levels of the root."
