"""1:k' matching tuples derived from the stored 1:k tuples, for the accuracy-vs-k curve.

The ``tuples`` stage stores 1:2 and 1:k (``multiway_k``, 10 by default) tuples, the positive at
an exactly balanced random position. A 1:k' tuple (``2 <= k' < k``) is derived from a 1:k tuple
of one *stream* (the rows of a ``<split>/matching.parquet`` that share a ``seed`` value, in
table order; a stream never spans two splits):

1. keep the positive and the first ``k' - 1`` negatives, negatives taken in candidate order,
   skipping the positive;
2. draw the positive's new positions for the ``m`` rows of the stream with
   :func:`pipeline.tupling.sample.balanced_positions` and the generator
   ``numpy.random.default_rng([seed, k'])``: each position ``m // k'`` times plus ``m % k'``
   distinct positions chosen at random once more, shuffled over the rows. Exactly balanced,
   no position favoured, seeded, independent of any other k';
3. the kept negatives fill the other positions in their candidate order.

``k' == k`` returns the stored tuples unchanged. Because step 2 balances positions over a whole
stream, :func:`truncate` must be given every row of one stream in table order (candidate ids or
any per-candidate array such as scores: the result is the same rearrangement);
:func:`truncate_table` does the grouping on a ``matching`` frame.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from pipeline.tupling.sample import balanced_positions, insert_positive


def truncate(candidates: np.ndarray, label: np.ndarray, k_prime: int, seed: int
             ) -> tuple[np.ndarray, np.ndarray]:
    """1:k' tuples ``(m, k')`` and their labels ``(m,)`` from one stream's 1:k tuples.

    ``candidates`` is ``(m, k)`` (ids, scores, anything per candidate); ``label`` the positive's
    position in each row; ``seed`` the stream's ``seed`` column value.
    """
    candidates, label = np.asarray(candidates), np.asarray(label, dtype=np.int64)
    if candidates.ndim != 2 or label.shape != candidates.shape[:1]:
        raise ValueError(f"need candidates (m, k) and label (m,), got {candidates.shape} and {label.shape}")
    m, k = candidates.shape
    if not 2 <= k_prime <= k:
        raise ValueError(f"cannot truncate 1:{k} tuples to 1:{k_prime}")
    if m and (label.min() < 0 or label.max() >= k):
        raise ValueError(f"labels must lie in 0..{k - 1}")
    if k_prime == k:
        return candidates.copy(), label.copy()
    is_positive = np.arange(k)[None, :] == label[:, None]  # (m, k)
    positive = candidates[np.arange(m), label]  # (m,)
    negatives = candidates[~is_positive].reshape(m, k - 1)[:, :k_prime - 1]  # (m, k' - 1)
    new_label = balanced_positions(np.random.default_rng([seed, k_prime]), m, k_prime)
    return insert_positive(positive, negatives, new_label), new_label


def truncate_table(matching: pl.DataFrame, k_prime: int) -> pl.DataFrame:
    """:func:`truncate` applied stream by stream (rows grouped by ``seed``) to a matching frame.

    Every row must have ``k >= k_prime``; pass whole streams (e.g. ``matching.filter(pl.col("k")
    == 10)``), since the positions are balanced over each stream. Rows keep their order and
    columns; ``k`` becomes ``k_prime``, ``seed`` still names the source stream.
    """
    if matching.filter(pl.col("k") < k_prime).height:
        raise ValueError(f"cannot truncate to 1:{k_prime}: some tuples have fewer candidates")
    rows = matching.with_row_index("_row")
    ids, labels = [None] * matching.height, np.zeros(matching.height, dtype=np.int64)
    for (seed,), stream in rows.group_by("seed", maintain_order=True):
        k = int(stream["k"][0])
        if (stream["k"] != k).any():
            raise ValueError(f"stream {seed} mixes tuple sizes")
        candidates = stream["candidate_ids"].list.to_array(k).to_numpy()  # (m, k)
        cut, label = truncate(candidates, stream["label"].to_numpy(), k_prime, int(seed))
        for row, cands in zip(stream["_row"].to_list(), cut.tolist(), strict=True):
            ids[row] = cands
        labels[stream["_row"].to_numpy()] = label
    return matching.with_columns(
        candidate_ids=pl.Series(ids, dtype=pl.List(pl.Utf8)),
        label=pl.Series(labels, dtype=matching.schema["label"]),
        k=pl.lit(k_prime, dtype=matching.schema["k"]))
