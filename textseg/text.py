"""Referring-text utilities: positional labels, positional phrases and text augmentations.

The referring texts of QaTa-COV19 and MosMedData+ come from LViT (Li et al., IEEE TMI 2023) and follow the
template "<Bilateral|Unilateral> pulmonary infection, <count> infected area(s), <loc>[ and <loc>]." where
``<loc>`` is ``[all | (upper|middle|lower)+] <left|right> lung``. "Left" and "right" are **image** sides
(``data.md`` §9). This module provides

* :func:`position_label` -- the six-dimensional positional label
  ``[L-upper, L-middle, L-lower, R-upper, R-middle, R-lower]`` (:data:`REGIONS`) parsed from a raw text.
  It reproduces Ye et al.'s cleaned QaTa labels (SGSeg, MICCAI 2024, ``annotation.json``) and Semi-MedRef's
  MosMed labels (``scripts/prepare_splits.py``, ``report_position_vector``), including LViT's typos;
* :func:`find_phrases` / :func:`first_phrase` -- the positional-phrase pattern of Semi-MedRef's PosAug and
  T-PatchMix (``utils/pos_aug.py``, ``POS_PHRASE_RE``; ``methods.md`` §6.3);
* :func:`pos_aug` -- PosAug (Semi-MedRef §2.3): dropout of a phrase to ``[UNK_POS]`` or fuzzing to a
  location-agnostic phrase;
* :func:`span_mix` -- the text side of T-PatchMix (Semi-MedRef Eqs. 6-8, ``methods.md`` §6.4);
* :func:`swap_left_right`, :func:`swap_upper_lower`, :func:`flip_position_label`,
  :func:`vflip_position_label` -- text/label updates for horizontal and vertical image flips (SPC ablation);
* :func:`text_strong` -- the generic "TextStrong" ablation of Semi-MedRef Table 3 (EDA-style synonym
  replacement and random deletion).

Everything here is pure Python (``re``, ``random``, ``dataclasses``).
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from textseg.errors import DataError

__all__ = [
    "BARE_SIDE_MODES",
    "FUZZY_PHRASE",
    "INHERIT_FALLBACK_LEVELS",
    "KNOWN_TYPOS",
    "LEVELS",
    "REGIONS",
    "SIDES",
    "SYNONYMS",
    "UNK_POS_TOKEN",
    "BareSide",
    "Phrase",
    "find_phrases",
    "first_phrase",
    "flip_position_label",
    "has_location",
    "location_span",
    "pos_aug",
    "position_label",
    "span_mix",
    "swap_left_right",
    "swap_upper_lower",
    "text_strong",
    "vflip_position_label",
]

REGIONS: tuple[str, ...] = (
    "left_upper",
    "left_middle",
    "left_lower",
    "right_upper",
    "right_middle",
    "right_lower",
)
"""Order of the six positional-label entries (SGSeg's order; "left"/"right" are image sides)."""

LEVELS: tuple[str, ...] = ("upper", "middle", "lower")
"""Vertical levels in canonical (top-to-bottom) order."""

SIDES: tuple[str, ...] = ("left", "right")
"""Sides in label order: ``left`` fills entries 0-2, ``right`` entries 3-5."""

BareSide = Literal["all", "none", "inherit"]
"""How a side named without any level word ("left lung") is labelled, see :func:`position_label`."""

BARE_SIDE_MODES: tuple[str, ...] = ("all", "none", "inherit")
"""The accepted values of ``bare_side``."""

INHERIT_FALLBACK_LEVELS: tuple[str, ...] = ("lower",)
"""Levels of a bare side under ``bare_side="inherit"`` when no located group precedes it.

Ye et al. gave a leading bare side the lower level in 5 of the 6 such QaTa rows ("left and right lung",
"left lung and right lung", "right right lung"); lower is also the most frequent QaTa level (84.5 % of the
train left sides, ``data.md`` §4.2).
"""

UNK_POS_TOKEN = "[UNK_POS]"
"""PosAug's dropout token, kept as plain text (``methods.md`` §6.3, Decision)."""

FUZZY_PHRASE = "a region of the lung"
"""PosAug's location-agnostic replacement phrase (Semi-MedRef §2.3)."""

KNOWN_TYPOS: dict[str, tuple[str, ...]] = {
    # middle
    "midldle": ("middle",),
    "middlr": ("middle",),
    "midddle": ("middle",),
    "midle": ("middle",),
    "mddle": ("middle",),
    "midde": ("middle",),
    "iddle": ("middle",),
    # lower
    "lowe": ("lower",),
    "ower": ("lower",),
    "lwoer": ("lower",),
    "lowoer": ("lower",),
    "rlower": ("lower",),
    # upper
    "uooer": ("upper",),
    "uppper": ("upper",),
    "upperl": ("upper",),
    "lupper": ("upper",),
    "lowerl": ("upper",),
    # sides and "lung"
    "leff": ("left",),
    "eft": ("left",),
    "lef": ("left",),
    "lift": ("left",),
    "rught": ("right",),
    "ight": ("right",),
    "ung": ("lung",),
    "aall": ("all",),
    # tokens Ye et al. left unread (no level set for them in annotation.json)
    "mmiddle": (),
    "midlle": (),
    "middlel": (),
    "loweer": (),
    "llower": (),
}
"""Misspelt location words found in LViT's QaTa texts, with the reading Ye et al. gave them.

The readings are taken from Ye et al.'s labels (``annotation.json``), not from spelling alone: ``lowerl`` is
read as *upper* (consistent over all 8 rows that contain it) and five typo tokens were left unread (empty
reading), e.g. ``mmiddle`` in the 4 rows of "all left lung and upper mmiddle lower right lung." (label
``[1,1,1,1,0,1]``). Tokens absent from this table and from the vocabulary are read by a one-edit fuzzy match
and by splitting glued words ("upperlower", "lowerright", "leflung"), see :func:`_read_token`.
"""

_EXACT_WORDS: dict[str, tuple[str, ...]] = {
    "upper": ("upper",),
    "higher": ("upper",),
    "middle": ("middle",),
    "lower": ("lower",),
    "left": ("left",),
    "right": ("right",),
    "lung": ("lung",),
    "lungs": ("lung",),
    "all": ("all",),
    "and": ("and",),
}
_FUZZY_TARGETS: tuple[str, ...] = ("upper", "higher", "middle", "lower", "left", "right", "lung")
_FUZZY_MIN_TOKEN_LEN = 3
_FUZZY_MAX_DISTANCE = 1

# Start of the location part: everything after the last "infected area(s)" (robust to "oneinfected").
_COUNT_PHRASE_RE = re.compile(r"infected\s*areas?", re.IGNORECASE)
_WORD_RE = re.compile(r"[A-Za-z]+")

# Semi-MedRef's positional-phrase pattern (utils/pos_aug.py, POS_PHRASE_RE), verbatim.
_COMBO = r"(?:upper\s+middle\s+lower|upper\s+middle|middle\s+lower|upper\s+lower|upper|middle|lower)"
_POS_PHRASE_RE = re.compile(rf"\b({_COMBO})\s+(left|right)\s+lung\b", flags=re.IGNORECASE)

SYNONYMS: dict[str, tuple[str, ...]] = {
    "bilateral": ("double-sided", "two-sided"),
    "unilateral": ("one-sided", "single-sided"),
    "pulmonary": ("lung",),
    "infection": ("disease", "lesion", "opacity"),
    "infected": ("affected", "involved", "diseased"),
    "area": ("region", "zone"),
    "areas": ("regions", "zones"),
    "lung": ("pulmonary field", "lung field"),
    "upper": ("superior", "top"),
    "middle": ("mid", "central"),
    "lower": ("inferior", "bottom"),
    "all": ("entire", "whole"),
    "and": ("plus", "as well as"),
    "no": ("zero",),
    "zero": ("no",),
}
"""Synonym table of :func:`text_strong`, covering the vocabulary of the LViT texts (keys are lower case)."""


# ----------------------------------------------------------------------------------------------------------
# Token reading
# ----------------------------------------------------------------------------------------------------------


def _edit_distance(a: str, b: str) -> int:
    """Optimal-string-alignment (restricted Damerau-Levenshtein) distance between two words."""
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                cur[j] = min(cur[j], prev2[j - 2] + 1)
        prev2, prev = prev, cur
    return prev[len(b)]


def _read_single(token: str) -> tuple[tuple[str, ...], int] | None:
    """Read one token as one vocabulary word: exact, known typo, or unique one-edit fuzzy match.

    Returns:
        ``(reading, cost)`` with cost 0 for exact words and known typos and 1 for a fuzzy match, or ``None``.
    """
    if token in _EXACT_WORDS:
        return _EXACT_WORDS[token], 0
    if token in KNOWN_TYPOS:
        return KNOWN_TYPOS[token], 0
    if len(token) < _FUZZY_MIN_TOKEN_LEN:
        return None
    distances = [(_edit_distance(token, target), target) for target in _FUZZY_TARGETS]
    best = min(d for d, _ in distances)
    winners = [t for d, t in distances if d == best]
    if best > _FUZZY_MAX_DISTANCE or len(winners) != 1:
        return None
    return _EXACT_WORDS[winners[0]], best


@lru_cache(maxsize=4096)
def _read_token(token: str) -> tuple[str, ...]:
    """Read a lower-case alphabetic token as a sequence of canonical location words.

    The canonical words are ``upper``, ``middle``, ``lower``, ``left``, ``right``, ``lung``, ``all`` and
    ``and``. A token is read as (1) an exact word ("higher" = upper), (2) a :data:`KNOWN_TYPOS` entry, (3) the
    unique vocabulary word within one edit (tokens of >= 3 letters), or (4) glued words, split into a readable
    prefix and a recursively readable rest, preferring the split with the fewest edits ("upperlower",
    "lowerright", "leflung"). Anything else reads as ``()`` and is ignored.
    """
    single = _read_single(token)
    if single is not None:
        return single[0]
    best: tuple[int, tuple[str, ...]] | None = None
    for cut in range(1, len(token)):
        head = _read_single(token[:cut])
        if head is None or not head[0]:
            continue
        rest = _read_token(token[cut:])
        if not rest:
            continue
        rest_cost = _read_single(token[cut:])
        cost = head[1] + (rest_cost[1] if rest_cost is not None else 1)
        if best is None or cost < best[0]:
            best = (cost, head[0] + rest)
    return best[1] if best is not None else ()


def location_span(text: str) -> tuple[int, int]:
    """Return the character span of the location part of a referring text.

    The location part is everything after the last "infected area(s)" (whitespace optional, so LViT's
    "oneinfected area" works); texts without that phrase are searched whole.

    Args:
        text: A referring text.

    Returns:
        ``(start, end)`` character offsets into ``text``.
    """
    matches = list(_COUNT_PHRASE_RE.finditer(text))
    return (matches[-1].end() if matches else 0), len(text)


def _location_words(text: str) -> list[tuple[str, int, int]]:
    """Return ``(lower-case word, start, end)`` for every alphabetic run of the location part."""
    start, end = location_span(text)
    return [(m.group(0).lower(), m.start(), m.end()) for m in _WORD_RE.finditer(text, start, end)]


# ----------------------------------------------------------------------------------------------------------
# Positional labels
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _Group:
    """One location mention being parsed: level words, an "all" flag and the side word(s)."""

    levels: set[str] = field(default_factory=set)
    all_levels: bool = False
    sides: list[str] = field(default_factory=list)

    def empty(self) -> bool:
        return not (self.levels or self.all_levels or self.sides)


def _parse_groups(words: list[str]) -> list[_Group]:
    """Split a stream of canonical location words into location groups.

    A group is ``[all | level*] side+``; it is closed by "lung", by "and" after a side, or by a level word
    after a side. A group that only has level words (and "all") before "lung" or the end is kept without a
    side ("all left lung and upper lower lung."), while "and" between level words and a side does not close a
    group ("upper lower and right lung." = upper lower right lung). Repeated side words stay in one group.
    """
    groups: list[_Group] = []
    cur = _Group()
    for word in words:
        if word in LEVELS or word == "all":
            if cur.sides:
                groups.append(cur)
                cur = _Group()
            if word == "all":
                cur.all_levels = True
            else:
                cur.levels.add(word)
        elif word in SIDES:
            if word not in cur.sides:
                cur.sides.append(word)
        elif word == "lung" or (word == "and" and cur.sides):
            if not cur.empty():
                groups.append(cur)
            cur = _Group()
    if not cur.empty():
        groups.append(cur)
    return groups


def _resolve_groups(groups: list[_Group], bare_side: BareSide) -> list[tuple[str, tuple[str, ...]]]:
    """Resolve parsed groups into ``(side, levels)`` pairs in text order.

    * A group naming both sides ("middle right left lung") takes the side that no single-sided group uses,
      else its first side.
    * A group without a side ("all lung and middle lower right lung") takes the side opposite to the one
      named by the other groups; it is dropped when the other groups name no side or both.
    * "all" means all three levels and dominates level words ("all lower left lung").
    * A bare side follows ``bare_side``: ``all`` = all levels, ``none`` = no level, ``inherit`` = the levels
      of the nearest preceding resolved group, else :data:`INHERIT_FALLBACK_LEVELS`.
    """
    single = {g.sides[0] for g in groups if len(g.sides) == 1}
    resolved: list[tuple[str, tuple[str, ...]]] = []
    for group in groups:
        if len(group.sides) == 1:
            side = group.sides[0]
        elif group.sides:
            free = [s for s in group.sides if s not in single]
            side = free[0] if free else group.sides[0]
        elif len(single) == 1:
            side = SIDES[1 - SIDES.index(next(iter(single)))]
        else:
            continue
        if group.all_levels:
            levels = LEVELS
        elif group.levels:
            levels = tuple(level for level in LEVELS if level in group.levels)
        elif bare_side == "all":
            levels = LEVELS
        elif bare_side == "none":
            levels = ()
        else:
            previous = [lv for _, lv in resolved if lv]
            levels = previous[-1] if previous else INHERIT_FALLBACK_LEVELS
        resolved.append((side, levels))
    return resolved


def _check_bare_side(bare_side: str) -> None:
    if bare_side not in BARE_SIDE_MODES:
        raise DataError(f"bare_side={bare_side!r} is not one of {BARE_SIDE_MODES}")


def position_label(text: str, bare_side: BareSide = "all") -> list[int]:
    """Parse the six-dimensional positional label of a referring text.

    The label is ``[L-upper, L-middle, L-lower, R-upper, R-middle, R-lower]`` (:data:`REGIONS`, image sides).
    The parser tokenises the location part (:func:`location_span`), reads each token with LViT's typos
    (:data:`KNOWN_TYPOS`, one-edit fuzzy matches, glued words such as "lowerright"), and groups the words into
    mentions ``[all | level*] side [lung]``:

    * "all X lung" = the three levels of X; "(upper|middle|lower)+ X lung" = those levels;
    * ellipsis is understood: "lower left and lower right lung." names the lower level of both sides;
    * a side named without level words ("left lung") follows ``bare_side``;
    * "No pulmonary infection, zero infected areas." (no location) gives all zeros.

    On Semi-MedRef's MosMed files it equals ``report_position_vector`` of ``scripts/prepare_splits.py``
    (``bare_side="all"``; ``"none"`` gives the ``*(in).plabel.csv`` convention, ``data.md`` §4.3). On the
    9,258 QaTa texts it reproduces Ye et al.'s ``annotation.json`` labels for all but a handful of rows, best
    with ``bare_side="inherit"`` (Ye et al.'s reading of ambiguous bare sides).

    Args:
        text: A raw referring text (any case).
        bare_side: ``"all"`` (project decision for MosMed, Semi-MedRef's ratio runs): a bare side means all
            three levels; ``"none"``: it means nothing; ``"inherit"``: it repeats the levels of the preceding
            mention ("lower left lung and right lung." = lower of both), with :data:`INHERIT_FALLBACK_LEVELS`
            when nothing precedes (Ye et al.'s QaTa reading).

    Returns:
        Six 0/1 integers.

    Raises:
        DataError: If ``bare_side`` is not one of :data:`BARE_SIDE_MODES` or ``text`` is not a string.
    """
    if not isinstance(text, str):
        raise DataError(f"position_label expects a string text, got {type(text).__name__}: {text!r}")
    _check_bare_side(bare_side)
    words = [w for token, _, _ in _location_words(text) for w in _read_token(token)]
    label = [0] * len(REGIONS)
    for side, levels in _resolve_groups(_parse_groups(words), bare_side):
        offset = SIDES.index(side) * len(LEVELS)
        for level in levels:
            label[offset + LEVELS.index(level)] = 1
    return label


def has_location(text: str) -> bool:
    """Return whether a referring text names at least one lung region.

    Args:
        text: A referring text.

    Returns:
        ``True`` when :func:`position_label` (``bare_side="all"``) has a positive entry; ``False`` e.g. for
        "No pulmonary infection, zero infected areas.".
    """
    return any(position_label(text, bare_side="all"))


def _check_label(label: list[int] | tuple[int, ...]) -> list[int]:
    values = list(label)
    if len(values) != len(REGIONS):
        raise DataError(f"a positional label needs {len(REGIONS)} entries {REGIONS}, got {len(values)}: {label!r}")
    return values


def flip_position_label(label: list[int] | tuple[int, ...]) -> list[int]:
    """Return the positional label of the horizontally flipped image: swap the triples [0:3] and [3:6].

    Args:
        label: Six values in :data:`REGIONS` order.

    Returns:
        The label with left and right exchanged (``data.md`` §9).

    Raises:
        DataError: If the label does not have six entries.
    """
    values = _check_label(label)
    return values[3:6] + values[0:3]


def vflip_position_label(label: list[int] | tuple[int, ...]) -> list[int]:
    """Return the positional label of the vertically flipped image: swap upper and lower on each side.

    Args:
        label: Six values in :data:`REGIONS` order.

    Returns:
        ``[l_low, l_mid, l_up, r_low, r_mid, r_up]``.

    Raises:
        DataError: If the label does not have six entries.
    """
    values = _check_label(label)
    return [values[2], values[1], values[0], values[5], values[4], values[3]]


# ----------------------------------------------------------------------------------------------------------
# Positional phrases (PosAug / T-PatchMix)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phrase:
    """A positional phrase found in a text by Semi-MedRef's pattern.

    Attributes:
        start: Character offset of the phrase's first character in the text.
        end: Character offset just past its last character (``text[start:end]`` is the phrase).
        side: ``"left"`` or ``"right"`` (image side).
        levels: The named levels in canonical order (upper, middle, lower); never empty.
    """

    start: int
    end: int
    side: Literal["left", "right"]
    levels: tuple[str, ...]

    @property
    def canonical(self) -> str:
        """The normalised phrase, e.g. ``"upper middle left lung"`` (as ``normalize_pos_phrase`` gives)."""
        return " ".join((*self.levels, self.side, "lung"))


def find_phrases(text: str) -> list[Phrase]:
    """Find the positional phrases of a text with Semi-MedRef's PosAug/T-PatchMix pattern.

    The pattern (``utils/pos_aug.py``, ``POS_PHRASE_RE``; ``methods.md`` §6.3) is one of {upper middle
    lower, upper middle, middle lower, upper lower, upper, middle, lower}, whitespace, left|right, whitespace,
    "lung", matched case-insensitively at word boundaries. Faithful to the code, "all X lung", a bare
    "X lung", LViT's ellipsis ("lower left and ...") and misspelt words do **not** match; "all lower left
    lung" yields "lower left lung". So raw MosMed texts such as "all left lung and all right lung.." have no
    phrase, while every SGSeg caption has one (``data.md`` §8).

    Args:
        text: A referring text.

    Returns:
        The phrases in text order.
    """
    phrases = []
    for match in _POS_PHRASE_RE.finditer(text):
        named = match.group(1).lower().split()
        side: Literal["left", "right"] = "left" if match.group(2).lower() == "left" else "right"
        levels = tuple(level for level in LEVELS if level in named)
        phrases.append(Phrase(start=match.start(), end=match.end(), side=side, levels=levels))
    return phrases


def first_phrase(text: str) -> Phrase | None:
    """Return the first positional phrase of a text (T-PatchMix's position constraint), or ``None``."""
    match = find_phrases(text)
    return match[0] if match else None


def _check_probability(name: str, value: float) -> None:
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise DataError(f"{name}={value!r} must be a probability in [0, 1]")


def _replace_phrases(text: str, phrases: list[Phrase], replacements: list[str]) -> str:
    """Replace each phrase span of ``text`` with the matching replacement string."""
    pieces: list[str] = []
    cursor = 0
    for phrase, replacement in zip(phrases, replacements, strict=True):
        pieces.append(text[cursor : phrase.start])
        pieces.append(replacement)
        cursor = phrase.end
    pieces.append(text[cursor:])
    return "".join(pieces)


def pos_aug(
    text: str,
    rng: random.Random,
    rho: float = 0.5,
    edit_prob: float = 0.5,
    unk_token: str = UNK_POS_TOKEN,
    fuzzy_phrase: str = FUZZY_PHRASE,
) -> str:
    """PosAug, the position-aware text augmentation of Semi-MedRef §2.3 (student's strong text only).

    Every phrase found by :func:`find_phrases` is normalised to its canonical form and, independently with
    probability ``edit_prob`` (the code's ``pos_aug_p``), edited: dropout to ``unk_token`` with probability
    ``rho``, fuzzing to ``fuzzy_phrase`` with probability ``1 - rho``. The paper states only the
    dropout/fuzzing split; the extra per-phrase edit probability is the code's (``methods.md`` §6.3). A text
    without phrases is returned unchanged.

    Random draws: one ``rng.random()`` per phrase (edit if ``< edit_prob``), plus one for an edited phrase
    (dropout if ``< rho``), in text order, so the result is a deterministic function of the generator state.

    Args:
        text: The student's (strong-view) referring text.
        rng: Random generator.
        rho: Dropout probability ρ of an edit (paper: 0.5).
        edit_prob: Probability that a phrase is edited at all (code: 0.5).
        unk_token: Dropout replacement (kept as plain text, ``methods.md`` §6.3 Decision).
        fuzzy_phrase: Location-agnostic replacement.

    Returns:
        The augmented text.

    Raises:
        DataError: If ``rho`` or ``edit_prob`` is not in [0, 1].
    """
    _check_probability("rho", rho)
    _check_probability("edit_prob", edit_prob)
    phrases = find_phrases(text)
    if not phrases:
        return text
    replacements = []
    for phrase in phrases:
        if rng.random() < edit_prob:
            replacements.append(unk_token if rng.random() < rho else fuzzy_phrase)
        else:
            replacements.append(phrase.canonical)
    return _replace_phrases(text, phrases, replacements)


def span_mix(text_i: str, text_j: str, mode: Literal["and", "replace"] = "and") -> str:
    """Update the text of sample i for a T-PatchMix patch taken from sample j (Semi-MedRef Eqs. 6-8).

    Mode ``"and"`` (main config, code ``span_mix_dual``): when the first canonical phrases differ, the first
    phrase of ``text_i`` becomes "<phrase_i> and <phrase_j>". Mode ``"replace"`` (the ``random`` mode, code
    ``span_mix``): it is replaced by phrase_j. The text is returned unchanged when either text has no phrase
    (T-PatchMix does not mix then; the code would return ``text_j`` when only j has one) or, in ``"and"``
    mode, when the phrases are equal. Other phrases of ``text_i`` are kept verbatim.

    Args:
        text_i: Text of the sample receiving the patch.
        text_j: Text of the sample giving the patch.
        mode: ``"and"`` or ``"replace"``.

    Returns:
        The mixed text.

    Raises:
        DataError: If ``mode`` is unknown.
    """
    if mode not in ("and", "replace"):
        raise DataError(f"span_mix mode={mode!r} must be 'and' or 'replace'")
    phrase_i, phrase_j = first_phrase(text_i), first_phrase(text_j)
    if phrase_i is None or phrase_j is None:
        return text_i
    if mode == "and":
        if phrase_i.canonical == phrase_j.canonical:
            return text_i
        replacement = f"{phrase_i.canonical} and {phrase_j.canonical}"
    else:
        replacement = phrase_j.canonical
    return _replace_phrases(text_i, [phrase_i], [replacement])


# ----------------------------------------------------------------------------------------------------------
# Flips
# ----------------------------------------------------------------------------------------------------------


def _match_case(word: str, template: str) -> str:
    """Give ``word`` the case pattern of ``template`` (upper, capitalised or lower)."""
    if template.isupper() and len(template) > 1:
        return word.upper()
    if template[:1].isupper():
        return word[:1].upper() + word[1:]
    return word


def _swap_words(text: str, pairs: dict[str, str]) -> str:
    """Swap location words of ``text`` according to ``pairs`` (canonical word -> canonical word).

    Correctly spelt words are swapped anywhere in the text, keeping their case. In the location part,
    misspelt or glued tokens whose reading (:func:`_read_token`) contains a word of ``pairs`` are rewritten as
    their swapped, correctly spelt reading ("lift" -> "right", "lowerright" -> "lower left"); tokens whose
    reading contains none of them are left verbatim.
    """
    loc_start, _ = location_span(text)
    pieces: list[str] = []
    cursor = 0
    for match in _WORD_RE.finditer(text):
        token = match.group(0)
        lower = token.lower()
        if lower in pairs:
            new = _match_case(pairs[lower], token)
        elif match.start() >= loc_start and any(w in pairs for w in _read_token(lower)):
            reading = [pairs.get(w, w) for w in _read_token(lower)]
            new = _match_case(" ".join(reading), token)
        else:
            continue
        pieces.append(text[cursor : match.start()])
        pieces.append(new)
        cursor = match.end()
    pieces.append(text[cursor:])
    return "".join(pieces)


def swap_left_right(text: str) -> str:
    """Exchange the words left and right, for a horizontal image flip (``data.md`` §9).

    Case is kept ("Left" -> "Right"). Misspelt or glued side words of the location part are corrected on the
    way ("lift" -> "right", "lowerright" -> "lower left"), so ``position_label(swap_left_right(t))`` always
    equals ``flip_position_label(position_label(t))``; the function is an involution on texts whose side words
    are spelt correctly and not glued.

    Args:
        text: A referring text.

    Returns:
        The text with sides exchanged.
    """
    return _swap_words(text, {"left": "right", "right": "left"})


def swap_upper_lower(text: str) -> str:
    """Exchange the words upper and lower, for a vertical image flip ("middle" stays).

    Case is kept. Misspelt, glued or synonymous level words of the location part are rewritten as their
    swapped reading ("higher" -> "lower", "upperlower" -> "upper lower"). Each run of level words is then
    reversed, because the flip reverses their top-to-bottom order: "upper middle left lung" becomes "middle
    lower left lung" (canonical order again, so :func:`find_phrases` still matches it). Hence
    ``position_label`` of the result equals :func:`vflip_position_label` of the original label (for
    ``bare_side`` ``"all"`` and ``"none"``; the ``"inherit"`` fallback level is not flip-symmetric), and the
    function is an involution on texts whose level words are spelt correctly and not glued.

    Args:
        text: A referring text.

    Returns:
        The text with upper and lower exchanged.
    """
    swapped = _swap_words(text, {"upper": "lower", "lower": "upper"})
    return _LEVEL_RUN_RE.sub(_reverse_level_run, swapped)


_LEVEL_RUN_RE = re.compile(r"\b(?:upper|middle|lower)(?:\s+(?:upper|middle|lower))+\b", re.IGNORECASE)


def _reverse_level_run(match: re.Match[str]) -> str:
    """Reverse the order of a run of level words, keeping separators and each position's case pattern.

    After a vertical flip the top-to-bottom order of the named levels is reversed, so a canonical run
    ("upper middle" -> "lower middle") becomes canonical again ("middle lower"), which Semi-MedRef's phrase
    pattern requires; reversal also keeps :func:`swap_upper_lower` an involution.
    """
    words = list(_WORD_RE.finditer(match.group(0)))
    separators = [match.group(0)[a.end() : b.start()] for a, b in itertools.pairwise(words)]
    reordered = [_match_case(w.group(0).lower(), t.group(0)) for w, t in zip(words[::-1], words, strict=True)]
    pieces = [reordered[0]]
    for separator, word in zip(separators, reordered[1:], strict=True):
        pieces.extend((separator, word))
    return "".join(pieces)


# ----------------------------------------------------------------------------------------------------------
# TextStrong (generic text augmentation ablation)
# ----------------------------------------------------------------------------------------------------------

_TOKEN_CORE_RE = re.compile(r"^(\W*)(.*?)(\W*)$")


def text_strong(
    text: str,
    rng: random.Random,
    synonym_prob: float = 0.1,
    deletion_prob: float = 0.1,
) -> str:
    """Generic strong text augmentation, the "TextStrong" ablation of Semi-MedRef Table 3.

    EDA-style (Wei & Zou, 2019): each whitespace-separated word is, in order, (1) replaced with probability
    ``synonym_prob`` by a random synonym from :data:`SYNONYMS` when it has one (leading/trailing punctuation
    and capitalisation kept), then (2) deleted with probability ``deletion_prob``. If every word is deleted,
    one randomly chosen (possibly replaced) word is kept, so the result is never empty. Unlike PosAug it does
    not target positional phrases.

    Random draws, word by word: one synonym decision for a word that has synonyms (plus one choice when it is
    replaced), then one deletion decision per word; the result is deterministic for a given generator state.

    Args:
        text: A non-blank referring text.
        rng: Random generator.
        synonym_prob: Per-word synonym-replacement probability.
        deletion_prob: Per-word deletion probability.

    Returns:
        The augmented, non-empty text.

    Raises:
        DataError: If a probability is outside [0, 1] or ``text`` is blank.
    """
    _check_probability("synonym_prob", synonym_prob)
    _check_probability("deletion_prob", deletion_prob)
    words = text.split()
    if not words:
        raise DataError(f"text_strong needs a non-blank text, got {text!r}")
    replaced: list[str] = []
    for word in words:
        match = _TOKEN_CORE_RE.match(word)
        assert match is not None  # the pattern matches any string
        lead, core, trail = match.groups()
        options = SYNONYMS.get(core.lower())
        if options and rng.random() < synonym_prob:
            core = _match_case(rng.choice(options), core)
        replaced.append(f"{lead}{core}{trail}")
    kept = [word for word in replaced if rng.random() >= deletion_prob]
    if not kept:
        kept = [rng.choice(replaced)]
    return " ".join(kept)
