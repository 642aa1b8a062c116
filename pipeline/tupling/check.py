"""Checks the ``tuples`` stage runs on what it is about to write.

Each check counts violations (polars joins against the manifest, no Python loops over rows).
Any violation is a bug in the stage, not bad input, so :func:`validate` raises
``TupleCheckError`` naming the failed checks; the counts (all zero) go into ``summary.json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import polars as pl

from pipeline.tupling.inputs import Manifest

if TYPE_CHECKING:
    from pipeline.tuples import TuplesConfig

QUERY_MODALITY = {"v2f": "voice", "f2v": "face"}
CANDIDATE_MODALITY = {"v2f": "face", "f2v": "voice"}
HOME_SPLIT = {"train": "train", "seen_heard": "train", "val": "val", "test": "test"}


class TupleCheckError(RuntimeError):
    """The drawn tuples break an invariant (a bug in the stage)."""


def lookup(manifest: Manifest) -> pl.DataFrame:
    """One row per usable item: modality, identity index, video, item split, attributes, home split."""
    attrs = manifest.identities.select("ident", "gender_code", "nationality_code",
                                       pl.col("split").alias("home"))
    items = [f.select("id", "ident", "video_code", "split").with_columns(modality=pl.lit(m))
             for m, f in manifest.items.items()]
    return pl.concat(items).join(attrs, on="ident", how="left")


def _attach(frame: pl.DataFrame, items: pl.DataFrame, column: str, prefix: str) -> pl.DataFrame:
    renamed = items.rename({c: f"{prefix}{c}" for c in items.columns if c != "id"})
    return frame.join(renamed.rename({"id": column}), on=column, how="left", maintain_order="left")


def _count(frame: pl.DataFrame, expr: pl.Expr) -> int:
    return int(frame.select(expr.fill_null(True).sum()).item())


def _same_video_allowed(split: pl.Expr, cfg: TuplesConfig) -> pl.Expr:
    return (pl.when(split == "seen_heard").then(pl.lit(cfg.seen_heard_positive_same_video))
            .otherwise(pl.lit(cfg.positive_same_video)))


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


def _pair_like_checks(long: pl.DataFrame, positive: pl.Expr, cfg: TuplesConfig) -> dict[str, int]:
    same_identity = pl.col("q_ident") == pl.col("c_ident")
    same_video = pl.col("q_video_code") == pl.col("c_video_code")
    return {
        "positive_identity": _count(long, positive & ~same_identity),
        "positive_video": _count(long, positive & same_video & ~_same_video_allowed(pl.col("split"), cfg)),
        "negative_identity": _count(long, ~positive & same_identity),
        "constraint": _count(long, ~positive & _constraint_broken("q_", "c_")),
    }


def check_matching(matching: pl.DataFrame, items: pl.DataFrame, cfg: TuplesConfig) -> dict[str, int]:
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
        **_pair_like_checks(long, pl.col("pos") == pl.col("label"), cfg),
        "candidate_count": _count(rows, pl.col("candidate_ids").list.len() != pl.col("k")),
        "distinct_candidate_identities": _count(distinct, pl.col("n") != pl.col("k")),
        "label_range": _count(rows, (pl.col("label") < 0) | (pl.col("label") >= pl.col("k"))),
        "eval_positive_first": _count(rows, (pl.col("split") != "train") & (pl.col("label") != 0)),
        "train_label_balance": _count(spread, (pl.col("split") == "train") & (pl.col("hi") - pl.col("lo") > 1)),
    }


def check_pairs(pairs: pl.DataFrame, items: pl.DataFrame, cfg: TuplesConfig) -> dict[str, int]:
    long = _attach(_attach(pairs, items, "query_id", "q_"), items, "candidate_id", "c_")
    balance = pairs.group_by("split", "direction", "constraint").agg(
        pos=pl.col("same").sum(), neg=(~pl.col("same")).sum())
    checks = {f"pairs_{name}": n for name, n in {**_item_checks(long),
                                                 **_pair_like_checks(long, pl.col("same"), cfg)}.items()}
    checks["pairs_balance"] = _count(balance, (pl.col("pos").cast(pl.Int64) - pl.col("neg").cast(pl.Int64)).abs() > 1)
    return checks


def check_retrieval(retrieval: pl.DataFrame, items: pl.DataFrame) -> dict[str, int]:
    def side(column: str, prefix: str) -> pl.DataFrame:
        long = retrieval.select("split", "direction", column).explode(column)
        return _attach(long.drop_nulls(column), items, column, prefix)

    queries, gallery = side("query_ids", "q_"), side("gallery_ids", "c_")
    q_mod = pl.col("direction").replace_strict(QUERY_MODALITY)
    c_mod = pl.col("direction").replace_strict(CANDIDATE_MODALITY)
    expected = items.group_by(pl.col("split"), pl.col("modality")).len(name="expected")
    size = gallery.group_by("split", "direction").agg(n=pl.len(), unique=pl.col("gallery_ids").n_unique(),
                                                      modality=pl.col("c_modality").first())
    size = size.join(expected, on=["split", "modality"], how="left")
    relevant = queries.join(gallery.select("split", "direction", "c_ident").unique(),
                            left_on=["split", "direction", "q_ident"],
                            right_on=["split", "direction", "c_ident"], how="anti")
    return {
        "retrieval_ids_exist": _count(queries, pl.col("q_ident").is_null()) + _count(gallery, pl.col("c_ident").is_null()),
        "retrieval_modality": _count(queries, pl.col("q_modality") != q_mod) + _count(gallery, pl.col("c_modality") != c_mod),
        "retrieval_in_split": _count(queries, pl.col("q_split") != pl.col("split")) + _count(gallery, pl.col("c_split") != pl.col("split")),
        "retrieval_full_gallery": _count(size, (pl.col("n") != pl.col("expected")) | (pl.col("unique") != pl.col("n"))),
        "retrieval_query_has_relevant": relevant.height,
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


def validate(manifest: Manifest, tables: dict[str, pl.DataFrame], cfg: TuplesConfig) -> dict[str, int]:
    """Run every check, chunk by chunk; raise ``TupleCheckError`` if any finds a violation."""
    items = lookup(manifest)
    checks = check_retrieval(tables["retrieval"], items)
    used = []
    for chunk in _chunks(tables):
        found = {**check_matching(chunk["matching"], items, cfg), **check_pairs(chunk["pairs"], items, cfg)}
        for name, n in found.items():
            checks[name] = checks.get(name, 0) + n
        used.append(used_identities(chunk, items))
    if not used:  # nothing drawn: still report every check
        empty = {name: tables[name].clear() for name in ("matching", "pairs")}
        checks.update({**check_matching(empty["matching"], items, cfg), **check_pairs(empty["pairs"], items, cfg)})
    checks.update(check_cross_split(pl.concat(used) if used else pl.DataFrame(
        schema={"ident": pl.Int64, "home": pl.Utf8})))
    failed = {name: n for name, n in checks.items() if n}
    if failed:
        raise TupleCheckError(f"tuples: drawn tables break invariants: {failed}")
    return checks
