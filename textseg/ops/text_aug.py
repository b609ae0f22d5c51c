"""Referring-text augmentations: positional phrases, PosAug, T-PatchMix's span mixing and word swaps.

* :func:`find_phrases` / :func:`first_phrase` -- the positional-phrase pattern of Semi-MedRef's PosAug and
  T-PatchMix (``utils/pos_aug.py``, ``POS_PHRASE_RE``; ``docs/methods.md`` §6.3);
* :func:`pos_aug` -- PosAug (Semi-MedRef §2.3): dropout of a phrase to ``[UNK_POS]`` or fuzzing to a
  location-agnostic phrase;
* :func:`span_mix` -- the text side of T-PatchMix (Semi-MedRef Eqs. 6-8, ``docs/methods.md`` §6.4);
* :func:`swap_left_right`, :func:`swap_upper_lower` -- text updates for horizontal and vertical image flips (SPC
  ablation) and the text probes;
* :func:`text_strong` -- the generic "TextStrong" ablation of Semi-MedRef Table 3 (EDA-style synonym
  replacement and random deletion).

Everything here is pure Python (``re``, ``random``, ``dataclasses``); the vocabulary comes from
:mod:`textseg.ops.text`.
"""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import Literal

from textseg.errors import DataError
from textseg.ops.text import (
    _POS_PHRASE_RE,
    _WORD_RE,
    FUZZY_PHRASE,
    LEVELS,
    SYNONYMS,
    UNK_POS_TOKEN,
    _read_token,
    location_span,
)

__all__ = [
    "Phrase",
    "find_phrases",
    "first_phrase",
    "pos_aug",
    "span_mix",
    "swap_left_right",
    "swap_upper_lower",
    "text_strong",
]


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

    The pattern (``utils/pos_aug.py``, ``POS_PHRASE_RE``; ``docs/methods.md`` §6.3) is one of {upper middle
    lower, upper middle, middle lower, upper lower, upper, middle, lower}, whitespace, left|right, whitespace,
    "lung", matched case-insensitively at word boundaries. Faithful to the code, "all X lung", a bare
    "X lung", LViT's ellipsis ("lower left and ...") and misspelt words do **not** match; "all lower left
    lung" yields "lower left lung". So raw MosMed texts such as "all left lung and all right lung.." have no
    phrase, while every SGSeg caption has one (``docs/data.md`` §8).

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
    dropout/fuzzing split; the extra per-phrase edit probability is the code's (``docs/methods.md`` §6.3). A text
    without phrases is returned unchanged.

    Random draws: one ``rng.random()`` per phrase (edit if ``< edit_prob``), plus one for an edited phrase
    (dropout if ``< rho``), in text order, so the result is a deterministic function of the generator state.

    Args:
        text: The student's (strong-view) referring text.
        rng: Random generator.
        rho: Dropout probability ρ of an edit (paper: 0.5).
        edit_prob: Probability that a phrase is edited at all (code: 0.5).
        unk_token: Dropout replacement (kept as plain text, ``docs/methods.md`` §6.3 Decision).
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
    """Exchange the words left and right, for a horizontal image flip (``docs/data.md`` §9).

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
