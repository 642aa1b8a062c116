"""Checks the ``tuples`` stage runs on what it is about to write.

Each check counts violations (polars joins against the manifest, no Python loops over rows).
Any violation is a bug in the stage, not bad input, so :func:`validate` raises
``TupleCheckError`` naming the failed checks; the counts (all zero) go into ``summary.json``.
The rules come in as plain values (which splits allow a same-video positive, whether retrieval
keeps the query's own video), so this module never imports the stage.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import polars as pl

from pipeline.common.directions import CANDIDATE_MODALITY, QUERY_MODALITY
from pipeline.tupling.inputs import Manifest

HOME_SPLIT = {"train": "train", "seen_heard": "train", "val": "val", "test": "test"}


class TupleCheckError(RuntimeError):
    """The drawn tuples break an invariant (a bug in the stage)."""


def lookup(manifest: Manifest) -> pl.DataFrame:
    """One row per usable item: modality, identity index, video, item split, attributes, home split."""
    attrs = manifest.identities.select("ident", "gender_code", "nationality_code",
                                       pl.col("split").alias("home"))
    items = [f.select("id", "ident", "identity", "video", "video_code", "split").with_columns(modality=pl.lit(m))
             for m, f in manifest.items.items()]
    return pl.concat(items).join(attrs, on="ident", how="left")


def _attach(frame: pl.DataFrame, items: pl.DataFrame, column: str, prefix: str) -> pl.DataFrame:
    renamed = items.rename({c: f"{prefix}{c}" for c in items.columns if c != "id"})
    return frame.join(renamed.rename({"id": column}), on=column, how="left", maintain_order="left")


def _count(frame: pl.DataFrame, expr: pl.Expr) -> int:
    return int(frame.select(expr.fill_null(True).sum()).item())


def _same_video_allowed(split: pl.Expr, same_video_ok: Mapping[str, bool]) -> pl.Expr:
    return split.replace_strict(dict(same_video_ok), return_dtype=pl.Boolean)


def _constraint_broken(prefix_q: str, prefix_c: str) -> pl.Expr:
    """True where a negative breaks its row's constraint (unknown attributes break it too)."""
    gender = (pl.col(f"{prefix_q}gender_code") != pl.col(f"{prefix_c}gender_code")) | (pl.col(f"{prefix_q}gender_code") < 0)
    nation = ((pl.col(f"{prefix_q}nationality_code") != pl.col(f"{prefix_c}nationality_code"))
              | (pl.col(f"{prefix_q}nationality_code") < 0))
    return (pl.col("constraint").is_in(["G", "GN"]) & gender) | (pl.col("constraint").is_in(["N", "GN"]) & nation)


def _item_checks(long: pl.DataFrame) -> dict[str, int]:
    """Ids exist, have the direction's modality and the row's split; splits never mix."""
    q_mod = pl.col("direction").replace_strict(QUERY_MODALITY)
    c_mod = pl.col("direction").replace_strict(CANDIDATE_MODALITY)
    home = pl.col("split").replace_strict(HOME_SPLIT)
    return {
        "ids_exist": _count(long, pl.col("q_ident").is_null() | pl.col("c_ident").is_null()),
        "modality": _count(long, (pl.col("q_modality") != q_mod) | (pl.col("c_modality") != c_mod)),
        "item_in_split": _count(long, (pl.col("q_split") != pl.col("split")) | (pl.col("c_split") != pl.col("split"))),
        "identity_in_split": _count(long, (pl.col("q_home") != home) | (pl.col("c_home") != home)),
        "seen_heard_in_train": _count(long, (pl.col("split") == "train")
                                      & ((pl.col("q_split") == "seen_heard") | (pl.col("c_split") == "seen_heard"))),
    }


def _pair_like_checks(long: pl.DataFrame, positive: pl.Expr, same_video_ok: Mapping[str, bool]
                      ) -> dict[str, int]:
    same_identity = pl.col("q_ident") == pl.col("c_ident")
    same_video = pl.col("q_video_code") == pl.col("c_video_code")
    return {
        "positive_identity": _count(long, positive & ~same_identity),
        "positive_video": _count(long, positive & same_video & ~_same_video_allowed(pl.col("split"), same_video_ok)),
        "negative_identity": _count(long, ~positive & same_identity),
        "constraint": _count(long, ~positive & _constraint_broken("q_", "c_")),
    }


def check_matching(matching: pl.DataFrame, items: pl.DataFrame, same_video_ok: Mapping[str, bool]
                   ) -> dict[str, int]:
    """Matching rows; positions must be balanced per stream (each used ``m // k`` or ``+ 1`` times)."""
    rows = matching.with_row_index("row")
    long = rows.with_columns(pos=pl.int_ranges(0, pl.col("candidate_ids").list.len())).explode(
        ["candidate_ids", "pos"]).rename({"candidate_ids": "candidate_id"})  # one row per candidate
    long = _attach(_attach(long, items, "query_id", "q_"), items, "candidate_id", "c_")
    distinct = long.group_by("row").agg(n=pl.col("c_ident").n_unique(), k=pl.col("k").first())
    labels = rows.group_by("split", "direction", "constraint", "k", "label").len()
    spread = labels.group_by("split", "direction", "constraint", "k").agg(
        lo=pl.when(pl.col("label").n_unique() == pl.col("k").first()).then(pl.col("len").min()).otherwise(0),
        hi=pl.col("len").max())
    return {
        **_item_checks(long),
        **_pair_like_checks(long, pl.col("pos") == pl.col("label"), same_video_ok),
        "candidate_count": _count(rows, pl.col("candidate_ids").list.len() != pl.col("k")),
        "distinct_candidate_identities": _count(distinct, pl.col("n") != pl.col("k")),
        "label_range": _count(rows, (pl.col("label") < 0) | (pl.col("label") >= pl.col("k"))),
        "label_balance": _count(spread, pl.col("hi") - pl.col("lo") > 1),
    }


def check_pairs(pairs: pl.DataFrame, items: pl.DataFrame, same_video_ok: Mapping[str, bool]
                ) -> dict[str, int]:
    long = _attach(_attach(pairs, items, "query_id", "q_"), items, "candidate_id", "c_")
    balance = pairs.group_by("split", "direction", "constraint").agg(
        pos=pl.col("same").sum(), neg=(~pl.col("same")).sum())
    checks = {f"pairs_{name}": n for name, n in {**_item_checks(long),
                                                 **_pair_like_checks(long, pl.col("same"), same_video_ok)}.items()}
    checks["pairs_balance"] = _count(balance, (pl.col("pos").cast(pl.Int64) - pl.col("neg").cast(pl.Int64)).abs() > 1)
    return checks


RETRIEVAL_SIDES = {"q_": ("query_ids", "query_identities", "query_videos"),
                   "c_": ("gallery_ids", "gallery_identities", "gallery_videos")}


def _retrieval_side(retrieval: pl.DataFrame, items: pl.DataFrame, prefix: str) -> pl.DataFrame:
    """One row per listed item of one side, with its listed identity/video and the manifest's."""
    ids, identities, videos = RETRIEVAL_SIDES[prefix]
    long = retrieval.select("split", "direction", "exclude_same_video", id=ids, identity=identities,
                            video=videos).explode(["id", "identity", "video"]).drop_nulls("id")
    return _attach(long, items, "id", prefix)


def _relevant_counts(queries: pl.DataFrame, gallery: pl.DataFrame) -> pl.DataFrame:
    """Per query row: gallery items of its identity (``n_ident``) and of its identity and video."""
    keys = ["split", "direction", "identity"]
    by_ident = gallery.group_by(keys).agg(n_ident=pl.len())
    by_video = gallery.group_by([*keys, "video"]).agg(n_own=pl.len())
    return (queries.join(by_ident, on=keys, how="left", maintain_order="left")
            .join(by_video, on=[*keys, "video"], how="left", maintain_order="left")
            .with_columns(pl.col("n_ident", "n_own").fill_null(0)))


def _has_relevant(exclude: pl.Expr) -> pl.Expr:
    return pl.col("n_ident") - pl.when(exclude).then(pl.col("n_own")).otherwise(0) > 0


def _both(queries: pl.DataFrame, gallery: pl.DataFrame, broken: Callable[[str], pl.Expr]) -> int:
    """Violations on both sides; ``broken(prefix)`` flags a bad row of side ``prefix``."""
    return _count(queries, broken("q_")) + _count(gallery, broken("c_"))


def _query_set_errors(queries: pl.DataFrame, should: pl.DataFrame) -> int:
    """Listed queries that should not be, queries missing, and duplicates."""
    keys = ["split", "direction", "id"]
    listed, wanted = queries.select(keys), should.select(keys)
    return (listed.join(wanted, on=keys, how="anti").height + wanted.join(listed, on=keys, how="anti").height
            + listed.height - listed.unique().height)


def check_retrieval(retrieval: pl.DataFrame, items: pl.DataFrame, retrieval_same_video: bool
                    ) -> dict[str, int]:
    """Lists are aligned and match the manifest; galleries are whole; every query that has a
    relevant item once its own video is left out (unless allowed) is listed, and no other."""
    aligned = pl.all_horizontal([pl.col(c).list.len() == pl.col(cols[0]).list.len()
                                 for cols in RETRIEVAL_SIDES.values() for c in cols[1:]])
    misaligned = _count(retrieval, ~aligned)
    retrieval = retrieval.filter(aligned.fill_null(False))
    queries, gallery = (_retrieval_side(retrieval, items, p) for p in RETRIEVAL_SIDES)
    modality = {"q_": QUERY_MODALITY, "c_": CANDIDATE_MODALITY}
    expected = items.group_by("split", "modality").len(name="expected")
    size = gallery.group_by("split", "direction").agg(n=pl.len(), unique=pl.col("id").n_unique(),
                                                      modality=pl.col("c_modality").first())
    size = size.join(expected, on=["split", "modality"], how="left")
    splits = retrieval.select("split", "direction", "exclude_same_video",
                              modality=pl.col("direction").replace_strict(QUERY_MODALITY))
    every_query = items.join(splits, on=["split", "modality"])  # query-modality items of each row
    should = _relevant_counts(every_query, gallery).filter(_has_relevant(pl.col("exclude_same_video")))
    return {
        "retrieval_aligned": misaligned,
        "retrieval_ids_exist": _both(queries, gallery, lambda p: pl.col(f"{p}ident").is_null()),
        "retrieval_modality": _both(queries, gallery, lambda p: pl.col(f"{p}modality")
                                    != pl.col("direction").replace_strict(modality[p])),
        "retrieval_in_split": _both(queries, gallery, lambda p: pl.col(f"{p}split") != pl.col("split")),
        "retrieval_annotations": _both(queries, gallery, lambda p: (pl.col("identity") != pl.col(f"{p}identity"))
                                       | (pl.col("video") != pl.col(f"{p}video"))),
        "retrieval_full_gallery": _count(size, (pl.col("n") != pl.col("expected"))
                                         | (pl.col("unique") != pl.col("n"))),
        "retrieval_exclusion": _count(retrieval, pl.col("exclude_same_video") == retrieval_same_video),
        "retrieval_query_has_relevant": _count(_relevant_counts(queries, gallery),
                                               ~_has_relevant(pl.col("exclude_same_video"))),
        "retrieval_query_set": _query_set_errors(queries, should),
    }


def used_identities(tables: dict[str, pl.DataFrame], items: pl.DataFrame) -> pl.DataFrame:
    """Unique ``(ident, home)`` pairs used by the matching and pairs tables of one chunk."""
    ids = [tables["matching"].select("split", pl.col("query_id").alias("id")),
           tables["matching"].select("split", pl.col("candidate_ids").alias("id")).explode("id"),
           tables["pairs"].select("split", pl.col("query_id").alias("id")),
           tables["pairs"].select("split", pl.col("candidate_id").alias("id"))]
    used = pl.concat(ids).unique().join(items.select("id", "ident"), on="id", how="inner")
    return used.select("ident", home=pl.col("split").replace_strict(HOME_SPLIT)).unique()


def check_cross_split(used: pl.DataFrame) -> dict[str, int]:
    """No identity is used under two home splits (seen_heard counts as train)."""
    crossing = used.unique().group_by("ident").len().filter(pl.col("len") > 1)
    return {"identity_crosses_splits": crossing.height}


def _chunks(tables: dict[str, pl.DataFrame]) -> list[dict[str, pl.DataFrame]]:
    """The matching and pairs tables cut by split and direction, to bound memory."""
    keys = pl.concat([tables[name].select("split", "direction") for name in ("matching", "pairs")]).unique()
    out = []
    for split, direction in sorted(keys.iter_rows()):
        where = (pl.col("split") == split) & (pl.col("direction") == direction)
        out.append({name: tables[name].filter(where) for name in ("matching", "pairs")})
    return out


def validate(manifest: Manifest, tables: dict[str, pl.DataFrame], *, same_video_ok: Mapping[str, bool],
             retrieval_same_video: bool) -> dict[str, int]:
    """Run every check, chunk by chunk; raise ``TupleCheckError`` if any finds a violation.

    ``same_video_ok`` maps each split to whether a positive may come from the query's video;
    ``retrieval_same_video`` whether a retrieval query's gallery keeps its own video's items.
    """
    items = lookup(manifest)
    checks = check_retrieval(tables["retrieval"], items, retrieval_same_video)
    used = []
    for chunk in _chunks(tables):
        found = {**check_matching(chunk["matching"], items, same_video_ok),
                 **check_pairs(chunk["pairs"], items, same_video_ok)}
        for name, n in found.items():
            checks[name] = checks.get(name, 0) + n
        used.append(used_identities(chunk, items))
    if not used:  # nothing drawn: still report every check
        empty = {name: tables[name].clear() for name in ("matching", "pairs")}
        checks.update({**check_matching(empty["matching"], items, same_video_ok),
                       **check_pairs(empty["pairs"], items, same_video_ok)})
    checks.update(check_cross_split(pl.concat(used) if used else pl.DataFrame(
        schema={"ident": pl.Int64, "home": pl.Utf8})))
    failed = {name: n for name, n in checks.items() if n}
    if failed:
        raise TupleCheckError(f"tuples: drawn tables break invariants: {failed}")
    return checks
