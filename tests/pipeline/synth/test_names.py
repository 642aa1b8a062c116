"""Synthetic identities reproduce VoxCeleb1's metadata statistics (no rendering involved)."""

from __future__ import annotations

import re
from collections import Counter

import pytest

from pipeline.synth.names import (
    NATIONALITY_GROUP,
    apportion,
    initial_counts,
    sample_people,
    split_initials,
    split_sizes,
)
from tests.params import shipped_params

# Independent copies of the real vox1_meta.csv statistics, so a wrong table in the module fails.
REAL_INITIALS = dict(zip("ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                         (76, 40, 64, 89, 40, 15, 32, 28, 12, 185, 86, 54, 126, 41, 16, 40, 1, 76,
                          113, 64, 2, 16, 23, 1, 2, 9), strict=True))
REAL_TOP_NATIONALITIES = {"USA": 799, "UK": 215, "Canada": 54, "Australia": 37, "India": 26,
                          "Norway": 20, "Ireland": 18, "Germany": 9, "New Zealand": 8, "Italy": 8,
                          "Mexico": 7}
SPLITS = {"val": "AB", "test": "CDE", "train": "FGHIJKLMNOPQRSTUVWXYZ"}


def test_full_draw_reproduces_voxceleb1_counts() -> None:
    people = sample_people(1251, seed=3)
    assert Counter(p.name[0] for p in people) == Counter(REAL_INITIALS)
    assert Counter(p.gender for p in people) == {"m": 690, "f": 561}
    nationalities = Counter(p.nationality for p in people)
    assert len(nationalities) == 36
    for country, count in REAL_TOP_NATIONALITIES.items():
        assert nationalities[country] == count
    assert sum(nationalities.values()) - sum(REAL_TOP_NATIONALITIES.values()) == 50
    assert {s: sum(p.name[0] in letters for p in people) for s, letters in SPLITS.items()} == \
        {"val": 116, "test": 193, "train": 942}
    assert sum(p.set == "test" for p in people) == 40


@pytest.mark.parametrize("n", [6, 7, 12, 16, 20, 31, 50, 200])
def test_small_draws_keep_every_split_with_both_genders(n: int) -> None:
    people = sample_people(n, seed=n)
    assert len(people) == n
    for split, letters in SPLITS.items():
        genders = {p.gender for p in people if p.name[0] in letters}
        assert genders == {"m", "f"}, (n, split)


def test_default_size_supports_gender_constrained_1_to_10_test_tuples() -> None:
    test = [p for p in sample_people(200, seed=0) if p.name[0] in SPLITS["test"]]
    assert min(Counter(p.gender for p in test).values()) >= 10


def test_names_are_unique_first_last_ascii_and_sorted() -> None:
    people = sample_people(1251, seed=0)
    names = [p.name for p in people]
    assert all(re.fullmatch(r"[A-Za-z]+_[A-Za-z]+", name) for name in names)
    assert len(set(names)) == len(names)
    assert names == sorted(names)
    assert all(p.nationality in NATIONALITY_GROUP for p in people)
    assert all(18.0 <= p.age <= 85.0 for p in people)


def test_draw_is_deterministic_and_seeded() -> None:
    assert sample_people(40, seed=1) == sample_people(40, seed=1)
    assert sample_people(40, seed=1) != sample_people(40, seed=2)
    assert sample_people(40, seed=1) != sample_people(40, seed=1, stream=1)


def test_initial_counts_small_corpus_has_an_e_name_once_test_split_has_three() -> None:
    assert split_sizes(20) == {"val": 2, "test": 3, "train": 15}
    counts = initial_counts(20)
    assert counts["E"] == 1 and sum(counts.values()) == 20


def test_apportion_largest_remainder_with_bounds() -> None:
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(7, [5, 3, 2]) == [4, 2, 1]  # quotas 3.5, 2.1, 1.4
    assert apportion(6, [116, 193, 942], lo=[2, 2, 2]) == [2, 2, 2]
    assert apportion(5, [1, 100], lo=[1, 1], hi=[4, 4]) == [1, 4]
    with pytest.raises(ValueError):
        apportion(3, [1, 1], lo=[2, 2])


def test_too_few_identities_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="at least 6"):
        sample_people(5, seed=0)


def test_default_split_letters_are_the_shipped_manifest_letters() -> None:
    manifest = shipped_params()["manifest"]
    assert split_initials() == split_initials(manifest["val_initials"], manifest["test_initials"])
    assert split_initials() == SPLITS


@pytest.mark.parametrize(("val", "test"), [("A", "E"), ("XYZ", "QR"), ("m", "s")])
def test_draws_follow_the_split_letters_they_are_given(val: str, test: str) -> None:
    initials = split_initials(val, test)
    assert initials["val"] == val.upper() and initials["test"] == test.upper()
    people = sample_people(20, seed=0, initials=initials)
    for split, letters in initials.items():
        members = [p for p in people if p.name[0] in letters]
        assert {p.gender for p in members} == {"m", "f"}, split
    assert split_sizes(20, initials)["val"] == sum(p.name[0] in initials["val"] for p in people)
    assert sample_people(20, seed=0, initials=initials) != sample_people(20, seed=0)


def test_split_letters_are_validated() -> None:
    assert split_initials("ba", "edc") == split_initials()  # sorted, upper case
    with pytest.raises(ValueError, match="both val and test"):
        split_initials("AB", "BC")
    with pytest.raises(ValueError, match="letters A-Z"):
        split_initials("A1", "C")
    with pytest.raises(ValueError, match="val without a letter"):
        split_initials("", "C")
