"""Landmark layouts: which two points normalise NME, and which points swap under a horizontal flip.

Public face-landmark sets rarely name their points: a CSV exported from a [K, 2] array has
numbered columns, a `.pts` file has none at all. What the points mean comes from the
*convention* the set follows, which its point count identifies. Getting it wrong is silent
and large: on a 68-point set, dividing by the distance of points 0 and 1 (two neighbouring
jaw points) instead of the outer eye corners made a heatmap NME read 253.7 % instead of 58.2 %;
flipping an image without swapping left and right points teaches the head to put the left
eye on the right.

Conventions, 0-based point numbers (normaliser and mirror pairs as in the public evaluation
code of HRNet-Facial-Landmark-Detection, `lib/core/evaluation.py` and
`lib/utils/transforms.py`, and the datasets' own annotation guides):

- 5 points (MTCNN / RetinaFace / CelebA aligned order: left eye, right eye, nose, left and
  right mouth corner): eye centres 0 and 1.
- 29 points (COFW): points 8 and 9.
- 68 points (iBUG 300-W / Multi-PIE markup, also LaPa-68, AFLW2000-3D): outer eye corners 36 and 45.
- 98 points (WFLW): outer eye corners 60 and 72.

19 points (AFLW) are normalised by the face box size, which the evaluator does not read:
that count needs `--eye-indices`. Any count not listed needs `--eye-indices` too, unless
the columns name a left/right eye pair.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..errors import UserError

SIDES = {"left": "right", "right": "left", "l": "r", "r": "l"}
EYE_WORDS = ("eye", "pupil", "iris")
NOT_EYE_WORDS = ("brow", "eyebrow", "lid", "lash", "glass")


@dataclass(frozen=True)
class Convention:
    """A numbered landmark layout: its normalising points and its left/right pairs."""

    name: str
    points: int
    normaliser: tuple[int, int]
    normaliser_name: str
    pairs: tuple[tuple[int, int], ...]

    def mirror(self) -> tuple[int, ...]:
        return mirror_from_pairs(self.points, self.pairs)


def _reversed_run(first: int, last: int) -> list[tuple[int, int]]:
    """Pairs of a run of points numbered left to right: first <-> last, first+1 <-> last-1, ..."""
    return [(first + i, last - i) for i in range((last - first + 1) // 2)]


CONVENTIONS: dict[int, Convention] = {c.points: c for c in (
    Convention("5-point (eye centres, nose, mouth corners)", 5, (0, 1), "eye centres", ((0, 1), (3, 4))),
    Convention("COFW (29 points)", 29, (8, 9), "points 8 and 9 (as HRNet's COFW evaluation)",
               ((0, 1), (4, 6), (2, 3), (5, 7), (8, 9), (10, 11), (12, 14), (16, 17), (13, 15), (18, 19), (22, 23))),
    Convention("iBUG 300-W (68 points)", 68, (36, 45), "outer eye corners", tuple(
        _reversed_run(0, 16)  # jaw, image-left to image-right
        + _reversed_run(17, 26)  # brows
        + [(31, 35), (32, 34)]  # nostrils
        + [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes, clockwise from the outer corner
        + [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips, clockwise from the left corner
        + [(60, 64), (61, 63), (65, 67)])),  # inner lips
    Convention("WFLW (98 points)", 98, (60, 72), "outer eye corners", tuple(
        _reversed_run(0, 32)  # jaw
        + [(33, 46), (34, 45), (35, 44), (36, 43), (37, 42), (38, 50), (39, 49), (40, 48), (41, 47)]  # brows
        + [(55, 59), (56, 58)]  # nostrils
        + [(60, 72), (61, 71), (62, 70), (63, 69), (64, 68), (65, 75), (66, 74), (67, 73)]  # eyes
        + [(76, 82), (77, 81), (78, 80), (83, 87), (84, 86), (88, 92), (89, 91), (93, 95)]  # lips
        + [(96, 97)])),  # pupils
)}


def mirror_from_pairs(points: int, pairs: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    out = list(range(points))
    for i, j in pairs:
        out[i], out[j] = j, i
    return tuple(out)


def mirror_permutation(names: Sequence[str]) -> tuple[int, ...]:
    """Index of each name's mirror partner (left_eye <-> right_eye, l_brow <-> r_brow), else itself.

    A name is swapped only when its partner exists: CelebAMask-HQ's `l_lip` (lower lip) and
    `ear_r` (earring) have no `r_lip` / `ear_l`, so they stay.
    """
    lookup = {n.lower(): i for i, n in enumerate(names)}
    out = []
    for i, name in enumerate(names):
        parts = re.split(r"([_\-\s.]+)", name.lower())
        mirrored = "".join(SIDES.get(p, p) for p in parts)
        out.append(lookup.get(mirrored, i) if mirrored != name.lower() else i)
    return tuple(out)


def is_numbered(names: Sequence[str]) -> bool:
    """Names that carry no meaning: `p0, p1, ...` (unnamed pairs) or plain numbers."""
    return all(re.fullmatch(r"p?\d+", n.strip().lower()) for n in names)


@dataclass
class LandmarkLayout:
    """What the evaluator decided about a landmark set (recorded in results.json)."""

    points: int
    eye_indices: tuple[int, int]
    mirror: tuple[int, ...]
    flip: bool
    normalisation: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def resolve_layout(names: Sequence[str], eye_indices: tuple[int, int] | None, where: str) -> LandmarkLayout:
    """Normalising points and mirror of K named (or numbered) landmarks; UserError if they cannot be known."""
    k = len(names)
    convention = CONVENTIONS.get(k)
    numbered = is_numbered(names)
    named_mirror = mirror_permutation(names)
    notes = []
    if any(i != j for i, j in enumerate(named_mirror)):
        mirror, flip, mirror_from = named_mirror, True, "left/right names"
    elif convention is not None:
        mirror, flip, mirror_from = convention.mirror(), True, convention.name
    else:
        mirror, flip, mirror_from = tuple(range(k)), False, None
        notes.append(f"{where}: horizontal flips are off: the {k} landmarks have no left/right names and {k} is "
                     f"not a known layout ({_known()}); name the columns left_*/right_* to flip them")

    if eye_indices is not None:
        _check_indices(eye_indices, k)
        normalisation = {"points": list(eye_indices), "rule": "--eye-indices"}
    elif (pair := _named_eyes(names, named_mirror, where)) is not None:
        normalisation = {"points": list(pair), "rule": f"named eye points ({names[pair[0]]}, {names[pair[1]]})"}
    elif convention is not None:
        normalisation = {"points": list(convention.normaliser),
                         "rule": f"{convention.name}: {convention.normaliser_name}"}
    elif k == 19:
        raise UserError(f"{where}: 19 landmarks (AFLW) are normalised by face box size, which the evaluator does not "
                        "read; give --eye-indices I,J (two points whose distance normalises NME)")
    else:
        raise UserError(f"{where}: {k} landmarks{' without names' if numbered else ''} are not a known layout "
                        f"({_known()}); give --eye-indices I,J (the two points whose distance normalises NME, "
                        "e.g. the outer eye corners)")
    eyes = tuple(normalisation["points"])
    normalisation.update({"names": [names[i] for i in eyes], "flip_pairs_from": mirror_from})
    return LandmarkLayout(k, eyes, mirror, flip, normalisation, notes)


def _known() -> str:
    return ", ".join(f"{c.points}: {c.name.split(' (')[0] if c.points != 5 else '5-point'}"
                     for c in CONVENTIONS.values())


def _check_indices(eyes: tuple[int, int], k: int) -> None:
    if len(eyes) != 2 or eyes[0] == eyes[1] or min(eyes) < 0 or max(eyes) >= k:
        raise UserError(f"--eye-indices {','.join(map(str, eyes))} do not name two different points of the {k} "
                        f"landmarks (0..{k - 1})")


def _named_eyes(names: Sequence[str], mirror: tuple[int, ...], where: str) -> tuple[int, int] | None:
    """The left/right eye pair the names identify: one eye pair, else the outer corners, else the centres."""
    pairs = []
    for i, j in enumerate(mirror):
        if j <= i:
            continue
        words = [w for w in re.split(r"[_\-\s.]+", names[i].lower()) if w and w not in SIDES]
        text = "_".join(words)
        if any(w in text for w in EYE_WORDS) and not any(w in text for w in NOT_EYE_WORDS):
            pairs.append((i, j, text))
    if not pairs:
        return None
    if len(pairs) > 1:
        for preferred in ("outer", "cent", "pupil"):
            chosen = [p for p in pairs if preferred in p[2]]
            if len(chosen) == 1:
                pairs = chosen
                break
    if len(pairs) > 1:
        raise UserError(f"{where}: several eye point pairs ({', '.join(names[p[0]] for p in pairs)}); choose the "
                        "normalising pair with --eye-indices I,J")
    i, j, _ = pairs[0]
    return (i, j) if i < j else (j, i)
