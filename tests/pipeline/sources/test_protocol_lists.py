"""Importing "Seeking the Shape of Sound" lists onto manifests of generated corpora."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import typer
from typer.testing import CliRunner

from pipeline.common.rejects import TooManyRejects
from pipeline.manifest import ManifestConfig
from pipeline.manifest import run as run_manifest
from pipeline.sources import layout as L
from pipeline.sources.protocol_lists import import_cli, import_list, side_paths
from pipeline.tuples import PAIRS_COLUMNS, RETRIEVAL_SCHEMA
from tests.vox_tree import make_tree, write_jpg, write_meta, write_wav

# Hand-written over the tiny corpus (synth seed 11, three videos per identity): test identities
# id10003 Colin_Allen, id10004 Darren_Fleming, id10005 Eva_Singh; val id10001 Anthony_Wright,
# id10002 Barbara_Rossi. Faces are face-track frames, so VGGFace1 numbers map to frame numbers.
VERIFICATION = """\
# voice  face  -- Seeking the Shape of Sound verification format
id10003/vEvJqHqFx_H/00001.wav Colin_Allen/00001025.jpg
id10003/QsQJBkbzU8D/00001.wav Eva_Singh/00002100.jpg
id10005/qlMwWf_2ORZ/00001.wav Eva_Singh/00001500.jpg 1
id10004/E0n1W-i9Ipw/00001.wav Colin_Allen/00000250.jpg 0

Darren_Fleming/00001100.jpg id10004/41Tv7HBoNcA/00001.wav
id10001/lOdTzwlMZZU/00001.wav Barbara_Rossi/00000975.jpg
id10003/vEvJqHqFx_H/00001.wav Colin_Allen/1.6/7PUkITnwfE1/0000225.jpg
id10003/vEvJqHqFx_H/00099.wav Colin_Allen/00001025.jpg
id10003/vEvJqHqFx_H/00001.wav Colin_Allen/00000657.jpg
id10117/59-3D0HIDAc/00001.wav CCH_Pounder/00000657.jpg
id10003/vEvJqHqFx_H/00001.wav
id10003/vEvJqHqFx_H/00001.wav id10004/E0n1W-i9Ipw/00001.wav
id10003/vEvJqHqFx_H/00001.mp3 Colin_Allen/00001025.jpg
id10005/qlMwWf_2ORZ/00001.wav Eva_Singh/00001500.jpg 0
"""
EXPECTED_PAIRS = [  # line, direction, query, candidate, same, split, mapping
    (2, "v2f", "id10003/vEvJqHqFx_H/00001", "id10003/vEvJqHqFx_H/0001025", True, "test", "name_number"),
    (3, "v2f", "id10003/QsQJBkbzU8D/00001", "id10005/FUSYHfGEnBG/0002100", False, "test", "name_number"),
    (4, "v2f", "id10005/qlMwWf_2ORZ/00001", "id10005/qlMwWf_2ORZ/0001500", True, "test", "name_number"),
    (5, "v2f", "id10004/E0n1W-i9Ipw/00001", "id10003/7PUkITnwfE1/0000250", False, "test", "name_number"),
    (7, "f2v", "id10004/OKPMreAKnOO/0001100", "id10004/41Tv7HBoNcA/00001", True, "test", "name_number"),
    (8, "v2f", "id10001/lOdTzwlMZZU/00001", "id10002/Zym_yXPweSy/0000975", False, "val", "name_number"),
    (9, "v2f", "id10003/vEvJqHqFx_H/00001", "id10003/7PUkITnwfE1/0000225", True, "test", "path"),
]
EXPECTED_REJECTS = {10: "unmapped_voice", 11: "unmapped_face", 12: "unmapped_voice",
                    13: "bad_line", 14: "bad_line", 15: "unknown_modality", 16: "label_mismatch"}

RETRIEVAL = """\
id10003/vEvJqHqFx_H/00001.wav Colin_Allen/00001025.jpg Darren_Fleming/00001100.jpg Eva_Singh/00001500.jpg Eva_Singh/00002100.jpg
Eva_Singh/00001325.jpg id10005/FUSYHfGEnBG/00001.wav id10003/QsQJBkbzU8D/00001.wav id10004/OKPMreAKnOO/00001.wav
id10003/vEvJqHqFx_H/00001.wav Darren_Fleming/00001100.jpg Eva_Singh/00001500.jpg
id10003/vEvJqHqFx_H/00001.wav Colin_Allen/00001025.jpg Nobody_Here/00000001.jpg
id10003/vEvJqHqFx_H/00001.wav Colin_Allen/00001025.jpg Colin_Allen/00001025.jpg
id10003/vEvJqHqFx_H/00001.wav Colin_Allen/00001025.jpg id10004/OKPMreAKnOO/00001.wav
"""


def write_list(tmp_path: Path, text: str, name: str = "list.txt") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_manifest_has_the_items_the_lists_name(tiny_manifest: Path) -> None:
    utt = set(pl.read_parquet(tiny_manifest / "utterances.parquet")["id"])
    faces = set(pl.read_parquet(tiny_manifest / "faces.parquet")["id"])
    named = {q for _, _, q, c, *_ in EXPECTED_PAIRS for q in (q, c)}
    missing = named - utt - faces
    assert not missing, f"the generated corpus changed; update the hand-written lists: {missing}"


def test_verification_list_maps_and_rejects(tiny_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "imported" / "pairs_sss.parquet"
    summary = import_list("sss-verification", write_list(tmp_path, VERIFICATION), tiny_manifest, out,
                          constraint="U", max_reject_fraction=0.6)
    table = pl.read_parquet(out)
    assert table.columns[:len(PAIRS_COLUMNS)] == list(PAIRS_COLUMNS)
    got = list(zip(table["line"], table["direction"], table["query_id"], table["candidate_id"],
                   table["same"], table["split"], table["face_mapping"], strict=True))
    assert got == EXPECTED_PAIRS
    assert set(table["constraint"]) == {"U"} and table["seed"].null_count() == table.height
    assert table["query_path"][0] == "id10003/vEvJqHqFx_H/00001.wav"
    rejects_path, summary_path = side_paths(out)
    rejects = pl.read_parquet(rejects_path)
    by_line = {int(p.rsplit(":", 1)[1]): r for p, r in zip(rejects["path"], rejects["reason"], strict=True)}
    assert by_line == EXPECTED_REJECTS
    assert "CCH_Pounder" in rejects.filter(pl.col("reason") == "unmapped_voice")["detail"][1]
    assert summary["lines"] == 14 and summary["imported"] == 7 and summary["rejected"] == 7
    assert summary["positive_fraction"] == pytest.approx(4 / 7)
    assert summary["manifest_layout"] == "voxceleb1"
    assert json.loads(summary_path.read_text()) == json.loads(json.dumps(summary))


def test_too_many_rejects_fails_and_leaves_no_table(tiny_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "pairs_sss.parquet"
    with pytest.raises(TooManyRejects, match="7 of 14"):
        import_list("sss-verification", write_list(tmp_path, VERIFICATION), tiny_manifest, out)
    assert not out.exists() and side_paths(out)[0].exists()  # the rejects say why
    with pytest.raises(ValueError, match="unknown list format"):
        import_list("voxceleb-trials", write_list(tmp_path, VERIFICATION), tiny_manifest, out)


def test_retrieval_list(tiny_manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "retrieval_sss.parquet"
    summary = import_list("sss-retrieval", write_list(tmp_path, RETRIEVAL), tiny_manifest, out,
                          max_reject_fraction=0.5)
    table = pl.read_parquet(out)
    stage = list(RETRIEVAL_SCHEMA)  # the tuples stage's retrieval.parquet columns come first
    assert table.columns[:len(stage)] == stage
    assert table.select(stage).schema == pl.Schema(RETRIEVAL_SCHEMA)
    assert table["line"].to_list() == [1, 2, 3]
    assert table["direction"].to_list() == ["v2f", "f2v", "v2f"]
    first = table.row(0, named=True)
    assert first["query_ids"] == ["id10003/vEvJqHqFx_H/00001"]
    assert first["gallery_ids"] == ["id10003/vEvJqHqFx_H/0001025", "id10004/OKPMreAKnOO/0001100",
                                    "id10005/qlMwWf_2ORZ/0001500", "id10005/FUSYHfGEnBG/0002100"]
    assert first["query_identities"] == ["id10003"] and first["query_videos"] == ["vEvJqHqFx_H"]
    assert first["gallery_identities"] == ["id10003", "id10004", "id10005", "id10005"]
    assert first["gallery_videos"] == [g.split("/")[1] for g in first["gallery_ids"]]
    assert not any(table["exclude_same_video"])  # a published gallery is used as listed
    assert table["n_relevant"].to_list() == [1, 1, 0]
    assert table.row(1, named=True)["query_ids"] == ["id10005/rAO5vXKI0LW/0001325"]
    reasons = dict(zip(pl.read_parquet(side_paths(out)[0])["reason"],
                       pl.read_parquet(side_paths(out)[0])["kept"], strict=True))
    assert reasons == {"no_relevant": True, "unmapped_face": False, "duplicate_item": False,
                       "bad_line": False}
    assert summary["imported"] == 3 and summary["rejected"] == 3 and summary["recorded_anomalies"] == 1
    assert summary["gallery_sizes"] == [2, 3, 4]


def test_face_track_numbers_shared_by_videos_are_flagged(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    make_tree(root)  # every video has frames 25 and 50
    manifest = tmp_path / "manifest"
    run_manifest(root, manifest, ManifestConfig(workers=1))
    listing = write_list(tmp_path, "id10001/001vid00xyz/00001.wav Anna_Abbot/00000050.jpg\n")
    out = tmp_path / "pairs.parquet"
    summary = import_list("sss-verification", listing, manifest, out)
    assert pl.read_parquet(out)["candidate_id"].to_list() == ["id10001/001vid00xyz/0000050"]
    rejects = pl.read_parquet(side_paths(out)[0])
    assert rejects["reason"].to_list() == ["ambiguous_face"] and rejects["kept"].to_list() == [True]
    assert summary["recorded_anomalies"] == 1 and summary["rejected"] == 0


def make_vggface1_tree(root: Path) -> None:
    people = [("id10001", "Anna_Abbot", "f", "USA"), ("id10002", "Carl_Cole", "m", "UK"),
              ("id10003", "Harry_Connick_Jr.", "m", "USA"), ("id10004", "Zoe_Zane", "f", "UK")]
    write_meta(root, [(i, n, g, nat, "dev") for i, n, g, nat in people])
    lists = root / L.VOX1_VGGFACE_LISTS
    lists.mkdir(parents=True)
    for k, (ident, name, _, _) in enumerate(people):
        for v in range(2):
            write_wav(root / L.VOX1_WAV / ident / f"yt{k}vid{v}xxx" / "00001.wav", seconds=0.5, seed=v)
        lines = [f"{img} http://example.invalid/{img}.jpg 4 4 40 40 1 3.0 1" for img in (7, 657)]
        (lists / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
        write_jpg(root / L.VOX1_VGGFACE_IMAGES / name / "00000007.jpg", seed=k)
        write_jpg(root / L.VOX1_VGGFACE_IMAGES / name / "657.jpg", seed=k)  # unpadded name


def test_vggface1_layout_maps_images_by_path_or_vggface_id(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    make_vggface1_tree(root)
    manifest = tmp_path / "manifest"
    run_manifest(root, manifest, ManifestConfig(layout="vggface1", workers=1,
                                                seen_heard_fraction=0.0))
    listing = write_list(tmp_path, "\n".join([
        "id10001/yt0vid0xxx/00001.wav Anna_Abbot/00000007.jpg",
        "id10002/yt1vid1xxx/00001.wav Anna_Abbot/00000657.jpg",
        "id10003/yt2vid0xxx/00001.wav Harry_Connick_Jr/00000657.jpg",  # name without its dot
        "id10004/yt3vid0xxx/00001.wav Zoe_Zane/00000008.jpg",  # not on disk
    ]))
    out = tmp_path / "pairs.parquet"
    summary = import_list("sss-verification", listing, manifest, out, max_reject_fraction=0.3)
    table = pl.read_parquet(out)
    assert table["candidate_id"].to_list() == ["id10001/vggface/7", "id10001/vggface/657",
                                               "id10003/vggface/657"]
    assert table["face_mapping"].to_list() == ["path", "vggface_id", "vggface_id"]
    assert table["same"].to_list() == [True, False, True]
    assert summary["rejects_by_reason"] == {"unmapped_face": 1}


def test_cli(tiny_manifest: Path, tmp_path: Path) -> None:
    app = typer.Typer()
    app.command()(import_cli)
    listing = write_list(tmp_path, VERIFICATION.split("\n\n")[0] + "\n")
    out = tmp_path / "pairs.parquet"
    result = CliRunner().invoke(app, ["sss-verification", str(listing), str(out),
                                      "--manifest", str(tiny_manifest), "--constraint", "G"])
    assert result.exit_code == 0, result.output
    assert "4 of 4 lines imported" in result.output
    assert set(pl.read_parquet(out)["constraint"]) == {"G"}
