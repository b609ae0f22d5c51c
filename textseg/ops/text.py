"""Referring-text parsing: the positional labels of a text (text augmentations: :mod:`textseg.ops.text_aug`).

The referring texts of QaTa-COV19 and MosMedData+ come from LViT (Li et al., IEEE TMI 2023) and follow the
template "<Bilateral|Unilateral> pulmonary infection, <count> infected area(s), <loc>[ and <loc>]." where
``<loc>`` is ``[all | (upper|middle|lower)+] <left|right> lung``. "Left" and "right" are **image** sides
(``docs/data.md`` §9). This module provides

* :func:`position_label` -- the six-dimensional positional label
  ``[L-upper, L-middle, L-lower, R-upper, R-middle, R-lower]`` (:data:`REGIONS`) parsed from a raw text.
  It reproduces Ye et al.'s cleaned QaTa labels (SGSeg, MICCAI 2024, ``annotation.json``) and Semi-MedRef's
  MosMed labels (``scripts/prepare_splits.py``, ``report_position_vector``), including LViT's typos;
* :func:`flip_position_label`, :func:`vflip_position_label` -- label updates for horizontal and vertical image
  flips (SPC ablation);
* :class:`TokenLimit` -- the text encoder's token-length rule, applied to dataset texts before training.

Everything here is pure Python (``re``, ``random``, ``dataclasses``); :class:`TokenLimit` calls a given tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

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
    "TokenLimit",
    "flip_position_label",
    "has_location",
    "location_span",
    "position_label",
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
train left sides, ``docs/data.md`` §4.2).
"""

UNK_POS_TOKEN = "[UNK_POS]"
"""PosAug's dropout token, kept as plain text (``docs/methods.md`` §6.3, Decision)."""

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
    (``bare_side="all"``; ``"none"`` gives the ``*(in).plabel.csv`` convention, ``docs/data.md`` §4.3). On the
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
        The label with left and right exchanged (``docs/data.md`` §9).

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


@dataclass(frozen=True)
class TokenLimit:
    """The token-length rule of a text encoder: a dataset text it would truncate is bad input (``docs/data.md`` §8).

    Real QaTa-COV19 and MosMedData+ texts all fit in 24 tokens; a longer one is a data error, not something to cut
    silently. ``fit`` applies the rule with its model's tokenizer, ``textseg data check`` with the tokenizer of
    ``--text_encoder`` (:func:`textseg.data.base.validate_dataset`, the one validator of both).

    Attributes:
        tokenizer: A Hugging Face tokenizer (called on a list of texts).
        max_length: The encoder's token length (``[CLS]`` and ``[SEP]`` included).
        name: The text encoder's spec, for the message.
    """

    tokenizer: Any
    max_length: int
    name: str = ""

    @classmethod
    def of(cls, encoder: object) -> TokenLimit | None:
        """The rule of a text encoder (its ``tokenizer``, ``max_length`` and ``spec``); ``None`` without them."""
        tokenizer, max_length = getattr(encoder, "tokenizer", None), getattr(encoder, "max_length", None)
        if tokenizer is None or not isinstance(max_length, int):
            return None
        return cls(tokenizer, max_length, str(getattr(encoder, "spec", "")))

    def problems(self, texts: Mapping[str, str]) -> list[str]:
        """One line per text longer than ``max_length`` tokens.

        Args:
            texts: Text -> where it comes from (file and record), for the message.

        Returns:
            ``"<where>: text of N tokens, longer than the text encoder's max_length M ..."`` per long text.
        """
        unique = list(texts)
        if not unique:
            return []
        counts = [len(ids) for ids in self.tokenizer(unique, add_special_tokens=True, truncation=False)["input_ids"]]
        return [
            f"{texts[text]}: text of {n} tokens, longer than the text encoder's max_length {self.max_length} "
            f"({self.name!r} tokenizer), so it would be truncated: {text[:80]!r}; shorten it or raise "
            "--model.init_args.max_length"
            for n, text in zip(counts, unique, strict=True)
            if n > self.max_length
        ]
