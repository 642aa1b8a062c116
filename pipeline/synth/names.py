"""Synthetic identities that follow VoxCeleb1's metadata statistics (names, gender, nationality).

Everything here is cheap: a 1,251-identity draw takes milliseconds and renders nothing, so the
population statistics can be tested on their own. Counts are allocated with the largest-remainder
method, so a draw of 1,251 identities reproduces VoxCeleb1's counts exactly, and small draws keep
val (A-B by default), test (C-E) and train (the other letters) identities of both genders.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

# First letters of the 1,251 VoxCeleb1 names.
INITIAL_COUNTS: dict[str, int] = {
    "A": 76, "B": 40, "C": 64, "D": 89, "E": 40, "F": 15, "G": 32, "H": 28, "I": 12, "J": 185,
    "K": 86, "L": 54, "M": 126, "N": 41, "O": 16, "P": 40, "Q": 1, "R": 76, "S": 113, "T": 64,
    "U": 2, "V": 16, "W": 23, "X": 1, "Y": 2, "Z": 9,
}
GENDER_COUNTS: dict[str, int] = {"m": 690, "f": 561}
# The eleven largest nationalities of VoxCeleb1, then a long tail (36 countries in all).
NATIONALITY_COUNTS: dict[str, int] = {
    "USA": 799, "UK": 215, "Canada": 54, "Australia": 37, "India": 26, "Norway": 20,
    "Ireland": 18, "Germany": 9, "New Zealand": 8, "Italy": 8, "Mexico": 7,
    "Sweden": 6, "Netherlands": 5, "Spain": 4, "France": 3, "Philippines": 3, "Russia": 3,
    "Brazil": 2, "China": 2, "Denmark": 2, "South Africa": 2, "Pakistan": 2, "Chile": 2,
    "Switzerland": 2, "Japan": 1, "Israel": 1, "Poland": 1, "Austria": 1, "Belgium": 1,
    "Portugal": 1, "Croatia": 1, "Argentina": 1, "Guyana": 1, "Sri Lanka": 1,
    "Trinidad and Tobago": 1, "Iran": 1,
}
# Name-initial split used by the field (SVHF-Net, DIMNet, AML, P2VANet). The generator is given
# params.yaml's manifest.val_initials / manifest.test_initials (by `acquire`); these defaults
# equal them (tests check it).
VAL_INITIALS, TEST_INITIALS = "AB", "CDE"
SPLITS = ("val", "test", "train")
TEST_SET_INITIAL = "E"  # VoxCeleb1's own `Set` column: test is exactly the names starting with E
MIN_PER_SPLIT = 2  # so every split can hold both genders
MIN_IDENTITIES = MIN_PER_SPLIT * len(SPLITS)
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def split_initials(val: str = VAL_INITIALS, test: str = TEST_INITIALS) -> dict[str, str]:
    """``{"val": ..., "test": ..., "train": every other letter}``, letters upper-case and sorted.

    Raises ``ValueError`` when a split would have no letter or the two sets overlap.
    """
    val_set, test_set = set(val.upper()), set(test.upper())
    if not (val_set | test_set) <= set(ALPHABET):
        raise ValueError(f"split initials must be letters A-Z; got {val!r} and {test!r}")
    if val_set & test_set:
        raise ValueError(f"initials {sorted(val_set & test_set)} are in both val and test")
    out = {"val": "".join(sorted(val_set)), "test": "".join(sorted(test_set)),
           "train": "".join(c for c in ALPHABET if c not in val_set | test_set)}
    empty = [s for s, letters in out.items() if not letters]
    if empty:
        raise ValueError(f"split initials leave {', '.join(empty)} without a letter")
    return out

# Accent / appearance group of each nationality: the shared trait that links voice and face.
NATIONALITY_GROUP: dict[str, str] = {
    "USA": "north_american", "Canada": "north_american", "UK": "british", "Ireland": "british",
    "Australia": "oceanic", "New Zealand": "oceanic", "South Africa": "oceanic",
    "India": "south_asian", "Pakistan": "south_asian", "Sri Lanka": "south_asian",
    "Guyana": "caribbean", "Trinidad and Tobago": "caribbean",
    "Norway": "north_european", "Sweden": "north_european", "Denmark": "north_european",
    "Germany": "north_european", "Netherlands": "north_european", "Switzerland": "north_european",
    "Austria": "north_european", "Belgium": "north_european", "Poland": "north_european",
    "Russia": "north_european", "Croatia": "north_european",
    "Italy": "latin", "Spain": "latin", "France": "latin", "Portugal": "latin", "Mexico": "latin",
    "Brazil": "latin", "Chile": "latin", "Argentina": "latin",
    "Philippines": "east_asian", "China": "east_asian", "Japan": "east_asian",
    "Israel": "middle_eastern", "Iran": "middle_eastern",
}
GROUPS: tuple[str, ...] = tuple(sorted(set(NATIONALITY_GROUP.values())))

FIRST_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "m": {
        "A": ("Aaron", "Adam", "Alan", "Albert", "Alex", "Andrew", "Anthony", "Arthur", "Austin"),
        "B": ("Barry", "Ben", "Bill", "Blake", "Brad", "Brian", "Bruce"),
        "C": ("Calvin", "Carl", "Chad", "Charles", "Chris", "Colin", "Craig", "Curtis"),
        "D": ("Dale", "Daniel", "Darren", "David", "Dean", "Dennis", "Derek", "Dominic", "Donald"),
        "E": ("Eddie", "Edgar", "Edward", "Eli", "Elliot", "Emmett", "Eric", "Evan"),
        "F": ("Felix", "Fergus", "Finn", "Frank", "Fred"),
        "G": ("Gabriel", "Gary", "Gavin", "George", "Glenn", "Graham", "Greg"),
        "H": ("Hank", "Harold", "Harry", "Henry", "Howard", "Hugh"),
        "I": ("Ian", "Igor", "Isaac", "Ivan"),
        "J": ("Jack", "Jacob", "Jake", "James", "Jason", "Jeff", "Jeremy", "Jim", "Joe", "John",
              "Jonah", "Jordan", "Joseph", "Josh", "Julian", "Justin"),
        "K": ("Karl", "Keith", "Ken", "Kevin", "Kieran", "Kurt", "Kyle"),
        "L": ("Lance", "Larry", "Leo", "Leon", "Liam", "Logan", "Luke"),
        "M": ("Malcolm", "Marcus", "Mark", "Martin", "Matt", "Max", "Michael", "Mike", "Miles",
              "Mitch"),
        "N": ("Nathan", "Neil", "Nick", "Nigel", "Noah", "Norman"),
        "O": ("Oliver", "Omar", "Oscar", "Owen"),
        "P": ("Patrick", "Paul", "Pete", "Philip", "Preston"),
        "Q": ("Quentin", "Quincy"),
        "R": ("Ralph", "Randy", "Ray", "Richard", "Rick", "Robert", "Roger", "Ryan"),
        "S": ("Sam", "Scott", "Sean", "Seth", "Simon", "Stanley", "Steve", "Stuart"),
        "T": ("Ted", "Terry", "Thomas", "Tim", "Todd", "Tom", "Tony", "Travis"),
        "U": ("Ulrich", "Ulysses"),
        "V": ("Vance", "Victor", "Vincent", "Vijay"),
        "W": ("Walter", "Warren", "Wayne", "Wesley", "Will"),
        "X": ("Xavier", "Xander"),
        "Y": ("Yannick", "Yusuf"),
        "Z": ("Zach", "Zane", "Zeke"),
    },
    "f": {
        "A": ("Abigail", "Alice", "Amanda", "Amy", "Angela", "Anna", "April", "Ava"),
        "B": ("Barbara", "Bella", "Beth", "Betty", "Brenda", "Brooke"),
        "C": ("Carla", "Carmen", "Carol", "Chloe", "Claire", "Courtney", "Cynthia"),
        "D": ("Daisy", "Dana", "Debra", "Denise", "Diana", "Donna", "Dora"),
        "E": ("Eileen", "Elena", "Ellen", "Emily", "Emma", "Erica", "Eva", "Evelyn"),
        "F": ("Faith", "Fiona", "Flora", "Frances"),
        "G": ("Gemma", "Georgia", "Gina", "Grace", "Gwen"),
        "H": ("Hannah", "Hazel", "Heather", "Helen", "Holly"),
        "I": ("Ida", "Irene", "Iris", "Isabel"),
        "J": ("Jade", "Jane", "Janet", "Jasmine", "Jean", "Jenna", "Jessica", "Jill", "Joan",
              "Josie", "Joyce", "Julia", "June"),
        "K": ("Karen", "Kate", "Katie", "Kelly", "Kim", "Kristen", "Kylie"),
        "L": ("Laura", "Leah", "Lily", "Linda", "Lisa", "Lucy", "Lydia"),
        "M": ("Maggie", "Maria", "Marie", "Martha", "Mary", "Megan", "Melissa", "Mia", "Molly",
              "Monica"),
        "N": ("Nadia", "Nancy", "Naomi", "Natalie", "Nicole", "Nina"),
        "O": ("Olga", "Olive", "Olivia", "Opal"),
        "P": ("Pamela", "Paula", "Penny", "Phoebe", "Piper"),
        "Q": ("Queenie", "Quinn"),
        "R": ("Rachel", "Rebecca", "Rita", "Rose", "Ruby", "Ruth"),
        "S": ("Sally", "Sandra", "Sara", "Selma", "Sophie", "Stella", "Susan"),
        "T": ("Tamara", "Tara", "Teresa", "Tina", "Tracy", "Tessa"),
        "U": ("Uma", "Ursula"),
        "V": ("Valerie", "Vanessa", "Vera", "Violet"),
        "W": ("Wanda", "Wendy", "Whitney", "Willa"),
        "X": ("Ximena", "Xenia"),
        "Y": ("Yolanda", "Yvonne"),
        "Z": ("Zara", "Zoe", "Zelda"),
    },
}
LAST_NAMES: tuple[str, ...] = (
    "Adams", "Allen", "Archer", "Bailey", "Baker", "Banks", "Barnes", "Bell", "Bennett", "Berg",
    "Black", "Blake", "Bowen", "Boyd", "Brooks", "Brown", "Burke", "Butler", "Campbell", "Carter",
    "Chen", "Clark", "Cole", "Collins", "Cooper", "Cruz", "Daly", "Davies", "Dixon", "Doyle",
    "Duncan", "Dunn", "Ellis", "Evans", "Fischer", "Fleming", "Ford", "Foster", "Fox", "Garcia",
    "Gibson", "Gordon", "Graham", "Grant", "Gray", "Green", "Hale", "Hall", "Hansen", "Harper",
    "Harris", "Hayes", "Hill", "Holt", "Howard", "Hughes", "Hunt", "Irwin", "Jensen", "Johnson",
    "Jones", "Kane", "Kapoor", "Keller", "Kelly", "Kennedy", "King", "Klein", "Knight", "Lane",
    "Larsen", "Lawson", "Lee", "Lewis", "Lopez", "Lynch", "Marsh", "Martin", "Mason", "Meyer",
    "Miller", "Mills", "Moore", "Morgan", "Murphy", "Murray", "Nash", "Nelson", "Novak", "Olsen",
    "Owens", "Palmer", "Park", "Parker", "Patel", "Perry", "Pierce", "Porter", "Price", "Quinn",
    "Reed", "Reyes", "Rhodes", "Rice", "Rivera", "Roberts", "Rossi", "Russell", "Ryan", "Sanders",
    "Santos", "Schmidt", "Scott", "Sharma", "Shaw", "Silva", "Singh", "Snow", "Spencer", "Stone",
    "Sullivan", "Sutton", "Tanaka", "Taylor", "Thompson", "Tran", "Turner", "Vance", "Vega",
    "Wagner", "Walker", "Wallace", "Walsh", "Ward", "Watson", "Webb", "Wells", "West", "White",
    "Wilson", "Wolfe", "Wood", "Wright", "Young", "Zimmer",
)


@dataclass(frozen=True)
class Person:
    """One synthetic identity's metadata and shared latent traits.

    ``age`` (years) and ``body`` (within-gender size z-score) are the shared traits that both the
    voice (F0, vocal-tract length) and the face (width, jaw, chin, hair) depend on; gender and
    nationality (through its accent/appearance ``group``) are shared as well.
    """

    name: str
    gender: str
    nationality: str
    age: float
    body: float

    @property
    def group(self) -> str:
        return NATIONALITY_GROUP[self.nationality]

    @property
    def initial(self) -> str:
        return self.name[0]

    @property
    def set(self) -> str:
        """VoxCeleb1's ``Set`` column."""
        return "test" if self.initial == TEST_SET_INITIAL else "dev"


def _clamp_quotas(total: int, weights: Sequence[float], lo: Sequence[int],
                  hi: Sequence[int]) -> tuple[list[float], list[bool]]:
    """Proportional quotas, with items that fall outside [lo, hi] pinned to the bound."""
    quotas = [0.0] * len(weights)
    pinned = [False] * len(weights)
    while True:
        free = [i for i in range(len(weights)) if not pinned[i]]
        rest = total - sum(quotas[i] for i in range(len(weights)) if pinned[i])
        wsum = sum(weights[i] for i in free)
        for i in free:
            quotas[i] = rest * weights[i] / wsum if wsum > 0 else 0.0
        bad = [i for i in free if quotas[i] < lo[i] or quotas[i] > hi[i]]
        if not bad:
            return quotas, pinned
        for i in bad:
            quotas[i] = float(min(max(quotas[i], lo[i]), hi[i]))
            pinned[i] = True


def apportion(total: int, weights: Sequence[float], lo: Sequence[int] | None = None,
              hi: Sequence[int] | None = None) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder method).

    ``lo``/``hi`` bound each share; shares that would fall outside are pinned to the bound and the
    rest is re-apportioned among the others. Ties in the remainders go to the earlier item.
    """
    n = len(weights)
    lo = list(lo) if lo is not None else [0] * n
    hi = list(hi) if hi is not None else [total] * n
    if sum(lo) > total or sum(hi) < total:
        raise ValueError(f"cannot split {total} within bounds lo={lo} hi={hi}")
    quotas, _ = _clamp_quotas(total, weights, lo, hi)
    shares = [math.floor(q + 1e-9) for q in quotas]
    order = sorted(range(n), key=lambda i: (-(quotas[i] - shares[i]), i))
    for i in order[: total - sum(shares)]:
        shares[i] += 1
    return shares


def split_sizes(n: int, initials: Mapping[str, str] | None = None) -> dict[str, int]:
    """Identities per name-initial split, proportional to VoxCeleb1, at least 2 in each."""
    initials = initials or split_initials()
    if n < MIN_IDENTITIES:
        raise ValueError(f"need at least {MIN_IDENTITIES} identities "
                         f"(both genders in each of val/test/train); got {n}")
    names = list(initials)
    weights = [sum(INITIAL_COUNTS[c] for c in initials[s]) for s in names]
    shares = apportion(n, weights, lo=[MIN_PER_SPLIT] * len(names))
    return dict(zip(names, shares, strict=True))


def initial_counts(n: int, initials: Mapping[str, str] | None = None) -> dict[str, int]:
    """How many names start with each letter for ``n`` identities (exact for n = 1251)."""
    initials = initials or split_initials()
    out: dict[str, int] = {}
    for split, size in split_sizes(n, initials).items():
        letters = initials[split]
        shares = apportion(size, [INITIAL_COUNTS[c] for c in letters])
        out.update(zip(letters, shares, strict=True))
    return out


def male_counts(sizes: Mapping[str, int]) -> dict[str, int]:
    """Men per split: 690/1251 of all identities overall, at least one man and one woman per split."""
    n = sum(sizes.values())
    men = apportion(n, [GENDER_COUNTS["m"], GENDER_COUNTS["f"]])[0]
    names = list(sizes)
    shares = apportion(men, [sizes[s] for s in names], lo=[1] * len(names),
                       hi=[sizes[s] - 1 for s in names])
    return dict(zip(names, shares, strict=True))


def nationality_list(n: int) -> list[str]:
    """``n`` nationalities in VoxCeleb1's proportions (exact for n = 1251), in table order."""
    names = list(NATIONALITY_COUNTS)
    shares = apportion(n, [NATIONALITY_COUNTS[c] for c in names])
    return [c for c, k in zip(names, shares, strict=True) for _ in range(k)]


def _initials_and_genders(n: int, rng: np.random.Generator,
                          initials: Mapping[str, str]) -> list[tuple[str, str]]:
    """(initial, gender) for every identity, genders shuffled within each split."""
    counts = initial_counts(n, initials)
    sizes = split_sizes(n, initials)
    men = male_counts(sizes)
    pairs: list[tuple[str, str]] = []
    for split, size in sizes.items():
        letters = [c for c in initials[split] for _ in range(counts[c])]
        genders = np.array(["m"] * men[split] + ["f"] * (size - men[split]))
        genders = genders[rng.permutation(size)]
        pairs.extend(zip(letters, genders.tolist(), strict=True))
    return pairs


def _unique_name(initial: str, gender: str, taken: set[str], rng: np.random.Generator) -> str:
    firsts = FIRST_NAMES[gender][initial]
    for _ in range(10_000):
        name = f"{firsts[rng.integers(len(firsts))]}_{LAST_NAMES[rng.integers(len(LAST_NAMES))]}"
        if name not in taken:
            taken.add(name)
            return name
    raise RuntimeError(f"ran out of unique {gender} names starting with {initial}")


def draw_age(rng: np.random.Generator) -> float:
    """Celebrity ages: mostly 25-60, clipped to 18-85."""
    return float(np.clip(rng.normal(42.0, 13.0), 18.0, 85.0))


def sample_people(n: int, seed: int, stream: int = 0,
                  initials: Mapping[str, str] | None = None) -> list[Person]:
    """Draw ``n`` identities (names, gender, nationality, age, body), sorted by name.

    ``initials`` (from :func:`split_initials`; default A-B val, C-E test) are the manifest's
    split letters: every split gets at least two identities, of both genders. Deterministic in
    ``(n, seed, stream, initials)``; renders nothing, so it is cheap for any ``n``. Different
    ``stream`` values give independent populations (VoxCeleb vs CelebA people).
    """
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(stream,)))
    pairs = _initials_and_genders(n, rng, initials or split_initials())
    nationalities = nationality_list(n)
    order = rng.permutation(n)
    taken: set[str] = set()
    people = []
    for k, (initial, gender) in enumerate(pairs):
        people.append(Person(name=_unique_name(initial, gender, taken, rng), gender=gender,
                             nationality=nationalities[order[k]], age=round(draw_age(rng), 1),
                             body=round(float(rng.normal()), 3)))
    return sorted(people, key=lambda p: p.name)
