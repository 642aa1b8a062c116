"""The two matching directions and the modalities they pair: one definition for every stage.

A direction names the query's modality first: ``v2f`` is a voice query with face candidates,
``f2v`` the reverse. Code that differs by direction looks the modalities up here instead of
copying itself per direction.
"""

from __future__ import annotations

MODALITIES = ("voice", "face")  # in this order: the discriminator's modality label 0 / 1
DIRECTIONS = {"v2f": ("voice", "face"), "f2v": ("face", "voice")}  # query, candidate modality
QUERY_MODALITY = {d: query for d, (query, _) in DIRECTIONS.items()}
CANDIDATE_MODALITY = {d: candidate for d, (_, candidate) in DIRECTIONS.items()}
