"""The acquisition state of a series (stress or rest): one rule, used by routing and by loading.

Vendors and sites name the state only in words: Series Description (0008,103E)
and Protocol Name (0018,1030), e.g. ``STRESS SA``, ``STRS GATED``, ``ADENO SA``,
``Lexiscan Gated SAX``, ``RE SA``, ``RST_TOMO``, ``REDIST SA``, ``4HR DELAYED``.
No coded attribute carries it for NM (PET and MR will add theirs here).

The rule: each text is upper-cased and split on every character that is not a
letter or a digit (so ``RST_TOMO`` gives ``RST`` and ``TOMO``); the state is
``stress`` when a token is one of :data:`STRESS_TOKENS` and none of
:data:`REST_TOKENS`, ``rest`` the other way round, and the next text is asked
when a text names neither or both. Whole tokens only: ``INTEREST`` and
``FOREST`` are not rest. The answer is ``unknown`` when no text decides.
"""

from __future__ import annotations

import re

from pydicom import Dataset

__all__ = ["STATES", "STRESS_TOKENS", "REST_TOKENS", "state_from_text", "acquisition_state"]

#: the states a series can be in, plus ``unknown``
STATES: tuple[str, ...] = ("stress", "rest")

#: tokens naming a stress acquisition (exercise or a pharmacological stressor)
STRESS_TOKENS: frozenset[str] = frozenset({
    "STRESS", "STR", "STRS", "EX", "EXERCISE", "ADENOSINE", "ADENO", "REGADENOSON", "LEXISCAN",
    "DIPYRIDAMOLE", "PERSANTINE", "DOBUTAMINE",
})

#: tokens naming a rest (or Tl-201 redistribution / delayed) acquisition
REST_TOKENS: frozenset[str] = frozenset({"REST", "RST", "RE", "REDISTRIBUTION", "REDIST", "DELAY", "DELAYED"})

_SEPARATORS = re.compile(r"[^A-Z0-9]+")


def state_from_text(*texts: object) -> str:
    """``"stress"``, ``"rest"`` or ``"unknown"`` from description texts; the first decisive text wins."""
    for text in texts:
        if not text:
            continue
        tokens = set(_SEPARATORS.split(str(text).upper()))
        stress, rest = bool(tokens & STRESS_TOKENS), bool(tokens & REST_TOKENS)
        if stress and not rest:
            return "stress"
        if rest and not stress:
            return "rest"
    return "unknown"


def acquisition_state(ds: Dataset) -> str:
    """The state of the series ``ds`` belongs to: Series Description, then Protocol Name."""
    return state_from_text(ds.get("SeriesDescription"), ds.get("ProtocolName"))
