"""Vectorized numpy sampling of matching tuples for the ``tuples`` stage.

All indices here are local: a query index points into the query modality's items of one split
(sorted by id), a candidate index into the other modality's items of the same split.

Queries are taken in order from a chain of random permutations of all query items, so every
item is used about equally often. A requested tuple whose query cannot be filled is not
replaced by another query: it is counted as a shortfall with its reason
(``no_queries``, ``missing_attribute``, ``no_positive``, ``too_few_negatives``), so the written
tuples stay a fair sample of the queries that can be filled and the loss is visible.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NO_EXCLUSION = -1


@dataclass(frozen=True)
class Pool:
    """Candidate items of one split, ordered by (identity, video, id)."""

    item: np.ndarray   # (n,) local candidate index of each pool row
    video: np.ndarray  # (n,) video code of each pool row
    key: np.ndarray    # (n,) identity * n_videos + video, ascending
    start: np.ndarray  # (n_identities,) first pool row of each identity
    count: np.ndarray  # (n_identities,) pool rows of each identity
    n_videos: int


def make_pool(ident: np.ndarray, video: np.ndarray, n_identities: int, n_videos: int) -> Pool:
    """Group candidate items (given in id order) by identity, then video."""
    order = np.lexsort((np.arange(len(ident)), video, ident))
    count = np.bincount(ident, minlength=n_identities).astype(np.int64)
    start = np.cumsum(count) - count
    key = ident[order].astype(np.int64) * n_videos + video[order]
    return Pool(item=order, video=video[order], key=key, start=start, count=count, n_videos=n_videos)


@dataclass(frozen=True)
class Groups:
    """Identities usable as negatives, grouped by their constraint key."""

    key: np.ndarray      # (n_identities,) group of each identity; -1 = attribute unknown
    members: np.ndarray  # identities with candidates and a known key, sorted by (key, identity)
    start: np.ndarray    # (n_groups,) first member of each group
    size: np.ndarray     # (n_groups,) members in each group
    rank: np.ndarray     # (n_identities,) position inside its group, -1 when not a member


def make_groups(key: np.ndarray, has_candidates: np.ndarray) -> Groups:
    n_groups = int(key.max()) + 1 if key.size and key.max() >= 0 else 1
    members = np.flatnonzero(has_candidates & (key >= 0))
    members = members[np.lexsort((members, key[members]))]
    size = np.bincount(key[members], minlength=n_groups).astype(np.int64)
    start = np.cumsum(size) - size
    rank = np.full(key.shape, -1, dtype=np.int64)
    rank[members] = np.arange(len(members)) - start[key[members]]
    return Groups(key=key, members=members, start=start, size=size, rank=rank)


def constraint_key(constraint: str, gender: np.ndarray, nationality: np.ndarray) -> np.ndarray:
    """Group key of every identity for constraint U, G, N or GN (-1 = cannot be grouped)."""
    if constraint == "U":
        return np.zeros_like(gender)
    if constraint == "G":
        return gender.copy()
    if constraint == "N":
        return nationality.copy()
    if constraint == "GN":
        n_nat = int(nationality.max()) + 1 if nationality.size else 1
        return np.where((gender >= 0) & (nationality >= 0), gender * n_nat + nationality, -1)
    raise ValueError(f"unknown constraint {constraint!r}")


@dataclass(frozen=True)
class Draw:
    """Drawn tuples: query, positive and negatives as local indices."""

    query: np.ndarray      # (m,)
    positive: np.ndarray   # (m,)
    negatives: np.ndarray  # (m, k - 1)
    same_video: int        # positives taken from the query's own video
    shortfall: dict[str, int]


def cycle_permutations(rng: np.random.Generator, n_items: int, n: int) -> np.ndarray:
    """The first ``n`` entries of a chain of random permutations of ``range(n_items)``."""
    if n_items == 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    rounds = -(-n // n_items)
    return np.concatenate([rng.permutation(n_items) for _ in range(rounds)])[:n]


def sample_distinct(rng: np.random.Generator, high: np.ndarray, excluded: np.ndarray,
                    n_draw: int) -> np.ndarray:
    """Per row, ``n_draw`` distinct ints from ``[0, high)`` minus ``excluded`` (-1: none).

    Each draw picks a rank among the values not taken yet and maps it to a value by stepping
    over the taken ones in ascending order; exact, and no rejection loop.
    """
    available = high - (excluded >= 0)
    taken = np.where(excluded >= 0, excluded, high)[:, None]  # (m, 1); ``high`` never matches
    out = np.empty((len(high), n_draw), dtype=np.int64)
    for j in range(n_draw):
        value = rng.integers(0, available - j) if len(high) else np.zeros(0, dtype=np.int64)
        for column in np.sort(taken, axis=1).T:  # (m,) per column, ascending along rows
            value = value + (value >= column)
        out[:, j] = value
        taken = np.concatenate([taken, value[:, None]], axis=1)  # (m, j + 2)
    return out


def _positive_slots(pool: Pool, q_ident: np.ndarray, q_video: np.ndarray,
                    same_video_ok: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per query: number of allowed positives, and the pool offset/length of its own video."""
    q_key = q_ident.astype(np.int64) * pool.n_videos + q_video
    lo = np.searchsorted(pool.key, q_key, side="left")
    own = np.searchsorted(pool.key, q_key, side="right") - lo
    if same_video_ok:
        own = np.zeros_like(own)
    slots = pool.count[q_ident] - own
    return slots, np.stack([lo - pool.start[q_ident], own])  # (2, m): own-video offset, length


def positive_count(pool: Pool, q_ident: np.ndarray, q_video: np.ndarray,
                   same_video_ok: bool) -> np.ndarray:
    """Per query, the candidates of its identity it may be matched with (own video excluded
    unless ``same_video_ok``)."""
    return _positive_slots(pool, q_ident, q_video, same_video_ok)[0]


def _draw_positives(rng: np.random.Generator, pool: Pool, q_ident: np.ndarray,
                    slots: np.ndarray, own: np.ndarray) -> np.ndarray:
    """One positive pool row per query, skipping the query's own video block when excluded."""
    rank = rng.integers(0, slots) if len(slots) else np.zeros(0, dtype=np.int64)
    offset, length = own
    rank = rank + length * (rank >= offset)
    return pool.start[q_ident] + rank


def _draw_negatives(rng: np.random.Generator, pool: Pool, groups: Groups, q_ident: np.ndarray,
                    k: int) -> np.ndarray:
    """``k - 1`` pool rows per query, from distinct other identities of the query's group."""
    group = groups.key[q_ident]
    picks = sample_distinct(rng, groups.size[group], groups.rank[q_ident], k - 1)  # (m, k-1)
    neg_ident = groups.members[groups.start[group][:, None] + picks]  # (m, k-1)
    count = pool.count[neg_ident]
    rank = rng.integers(0, count) if count.size else np.zeros_like(count)
    return pool.start[neg_ident] + rank


def _shortfall(reasons: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, int]]:
    """Assign each failing row its first reason; return the keep mask and the counts."""
    failed = np.zeros(len(next(iter(reasons.values()))), dtype=bool)
    counts = {}
    for reason, mask in reasons.items():
        new = mask & ~failed
        if new.any():
            counts[reason] = int(new.sum())
        failed |= new
    return ~failed, counts


def draw(rng: np.random.Generator, q_ident: np.ndarray, q_video: np.ndarray, pool: Pool,
         groups: Groups, k: int, n: int, same_video_ok: bool) -> Draw:
    """Draw ``n`` tuples of 1 query + 1 positive + ``k - 1`` negatives (fewer on shortfall)."""
    if len(q_ident) == 0 and n:
        empty = np.zeros(0, dtype=np.int64)
        return Draw(empty, empty, empty.reshape(0, k - 1), 0, {"no_queries": n})  # negatives (0, k-1)
    query = cycle_permutations(rng, len(q_ident), n)
    ident = q_ident[query]
    slots, own = _positive_slots(pool, ident, q_video[query], same_video_ok)
    group = groups.key[ident]
    available = groups.size[np.maximum(group, 0)] - (groups.rank[ident] >= 0)
    keep, shortfall = _shortfall({"missing_attribute": group < 0, "no_positive": slots <= 0,
                                  "too_few_negatives": available < k - 1})
    query, ident, slots, own = query[keep], ident[keep], slots[keep], own[:, keep]
    positive = _draw_positives(rng, pool, ident, slots, own)
    negatives = _draw_negatives(rng, pool, groups, ident, k)
    same_video = int((pool.video[positive] == q_video[query]).sum())
    return Draw(query=query, positive=pool.item[positive], negatives=pool.item[negatives],
                same_video=same_video, shortfall=shortfall)


def place(rng: np.random.Generator, draw_: Draw, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Candidate matrix ``(m, k)`` and the positive's position, in every split.

    The positions are an exactly balanced shuffle: each position holds the positive ``m // k``
    or ``m // k + 1`` times, in random rows, so neither a tie-breaking scorer nor a head that
    sees the slots can gain from position. The negatives fill the other slots in draw order.
    """
    m = len(draw_.query)
    label = balanced_positions(rng, m, k)
    return insert_positive(draw_.positive, draw_.negatives, label), label


def balanced_positions(rng: np.random.Generator, m: int, k: int) -> np.ndarray:
    """``m`` positions in ``0..k-1``: each ``m // k`` times, plus ``m % k`` distinct positions
    drawn at random once more (no position favoured), in a random order."""
    full, extra = divmod(m, k)
    labels = np.concatenate([np.tile(np.arange(k), full), rng.choice(k, size=extra, replace=False)])
    return rng.permutation(labels).astype(np.int64)


def insert_positive(positive: np.ndarray, negatives: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Rows of ``negatives`` ``(m, k - 1)`` with ``positive[i]`` inserted at ``label[i]``: ``(m, k)``."""
    m, k = len(label), negatives.shape[1] + 1
    is_positive = np.arange(k)[None, :] == label[:, None]  # (m, k)
    out = np.empty((m, k), dtype=np.result_type(positive, negatives))
    out[is_positive] = positive
    out[~is_positive] = negatives.ravel()  # (m * (k-1),) row-major, order kept
    return out
