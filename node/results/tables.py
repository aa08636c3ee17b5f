"""The report's results as text tables, shared by the PDF summary and the table screens.

* :func:`segment_table`: one row per AHA segment, one column per (state, quantity) found in
  the segment groups that carry measurements (SPECT: stress/rest uptake and scores; PET:
  rest MBF, stress MBF, MFR and the impaired-reserve evaluation), in content order;
* :func:`global_rows`: ``(label, value, unit)`` for every other result: the non-segment
  groups and the segment groups without measurements (e.g. a quality flag at a segment),
  measurements then coded evaluations, so that no reported result is left out.

* :func:`group_rows`: ``(concept, value, unit)`` of one group (measurements, then evaluations);
* :func:`reading_order`: the groups in the order a reader wants them (the SR's group order):
  the summary groups (:func:`is_summary_group`: scores, TPD, TID, global flow and reserve,
  LVEF/EDV/ESV, every model output) first, then the other non-segment groups, then the
  segment groups; :func:`summary_rows` picks a summary group's headline results.

Numbers are formatted by :func:`format_value` with the quantity's ``decimals``; column heads
and evaluation cells use the templates' short labels (``short_label`` in ``concepts.toml``
and ``evaluations.toml``; a head may have several lines).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal

import numpy as np

from node.quant.segments import N_SEGMENTS
from node.results.content import MeasurementGroup, ReportContent
from node.results.templates import Templates

__all__ = [
    "MODEL_PROBABILITY",
    "MODEL_VERDICT",
    "SUMMARY_KEYS",
    "format_value",
    "segment_of",
    "segment_table",
    "group_rows",
    "global_rows",
    "is_model_group",
    "is_summary_group",
    "reading_order",
    "summary_rows",
]

_SEGMENT_SITE = re.compile(r"^aha_(\d+)$")

#: the headline results, in the order a summary shows them: measurement quantity keys and evaluation
#: concept keys (``concepts.toml``, ``evaluations.toml``). A model output (:func:`is_model_group`) is a
#: summary group wherever its site; any other group is one when its site is the whole heart or ventricle
#: (:data:`_WHOLE_HEART_SITES`) and it carries one of these.
SUMMARY_KEYS: tuple[str, ...] = (
    "study_impression",
    "sss", "srs", "sds", "tpd_stress", "tpd_rest", "tpd_ischemic", "tid_ratio", "perfusion_category",
    "mbf", "mfr", "impaired_flow_reserve",
    "lvef", "edv", "esv", "lv_function_category",
    "probability", "classification",
)
_WHOLE_HEART_SITES = ("left_ventricle", "lv_myocardium", "heart")
#: the measurement that makes a group a model output (AI prediction), and the evaluation holding its verdict
MODEL_PROBABILITY = "probability"
MODEL_VERDICT = "classification"


def format_value(value: float, decimals: int | None = None) -> str:
    """A number as a table shows it: with ``decimals`` decimals, else integers without decimals,
    1 decimal from 1 and 2 decimals below 1; halves rounded away from zero (50.5 -> "51").

    The one rule for numbers a reader sees (tables, maps, screens, PDF, titles).
    """
    if not np.isfinite(value):
        return "-"
    if value == 0:
        value = 0.0  # no "-0"
    if decimals is None:
        decimals = 0 if float(value).is_integer() and abs(value) < 1000 else 1 if abs(value) >= 1 else 2
    # half away from zero on the shortest decimal form of the float: 50.5 -> "51", as a reader rounds
    # (Python's own formatting rounds half to even and on the binary value: 50.5 -> "50", 0.125 -> "0.12")
    text = str(Decimal(repr(float(value))).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def segment_of(group: MeasurementGroup) -> int | None:
    """The AHA segment (1..17) of a group that belongs in the segment table, else None.

    A group belongs there when its site is a segment and it carries measurements.
    """
    match = _SEGMENT_SITE.match(group.site)
    if match is None or not group.measurements:
        return None
    return int(match.group(1))


def segment_table(content: ReportContent, templates: Templates) -> tuple[list[str], list[list[str]]]:
    """Header and 17 rows of the per-segment table (no rows when no group is a segment row).

    The first column is ``"<n> <segment name>"``; then one column per ``(state, measurement
    quantity)`` and per ``(state, evaluation quantity)`` in the order they first appear. Head
    cells are ``"<state short label>\\n<quantity short label>"`` (no state line for state-less
    groups); evaluation cells hold the value's short label (several joined by ", ").
    """
    columns: list[tuple[str, str | None, str]] = []  # (kind "num" | "eval", state, quantity)
    cells: dict[tuple[int, str, str | None, str], str] = {}
    for group in content.groups:
        segment = segment_of(group)
        if segment is None:
            continue
        for m in group.measurements:
            key = ("num", group.state, m.quantity)
            if key not in columns:
                columns.append(key)
            cells[(segment, *key)] = format_value(m.value, templates.quantity(m.quantity, content.pipeline).decimals)
        for e in group.evaluations:
            key = ("eval", group.state, e.quantity)
            if key not in columns:
                columns.append(key)
            label = templates.evaluation_value_label(e.value)
            previous = cells.get((segment, *key))
            cells[(segment, *key)] = label if previous is None else f"{previous}, {label}"
    header = ["Segment"]
    for kind, state, quantity in columns:
        state_label = templates.state_short_label(state) if state else ""
        if kind == "num":
            name = templates.quantity(quantity, content.pipeline).short_label
        else:
            name = templates.evaluation_concept_label(quantity)
        header.append(f"{state_label}\n{name}".strip())
    rows: list[list[str]] = []
    if not columns:
        return header, rows
    for segment in range(1, N_SEGMENTS + 1):
        _, label = templates.site(f"aha_{segment}")
        name = label.split("(")[-1].rstrip(")") if "(" in label else label
        rows.append([f"{segment} {name}", *(cells.get((segment, *key), "") for key in columns)])
    return header, rows


def group_rows(group: MeasurementGroup, content: ReportContent, templates: Templates,
               keys: Sequence[str] | None = None) -> list[tuple[str, str, str]]:
    """``(concept meaning, value, unit)`` of ``group``: its measurements, then its coded evaluations.

    Values as :func:`format_value` prints them with the quantity's decimals; evaluation values are
    the templates' short labels (unit ``""``); units are UCUM codes (``"1"`` left blank,
    annotations without braces: ``{score}`` shown as ``score``). ``keys``: only the measurement
    quantities and evaluation concepts named there (None: all).
    """
    rows: list[tuple[str, str, str]] = []
    for m in group.measurements:
        if keys is not None and m.quantity not in keys:
            continue
        quantity = templates.quantity(m.quantity, content.pipeline)
        unit = "" if m.unit == "1" else m.unit.strip("{}")
        rows.append((quantity.code.meaning, format_value(m.value, quantity.decimals), unit))
    for e in group.evaluations:
        if keys is not None and e.quantity not in keys:
            continue
        rows.append((templates.evaluation_concept(e.quantity).meaning, templates.evaluation_value_label(e.value), ""))
    return rows


def global_rows(content: ReportContent, templates: Templates) -> list[tuple[str, str, str]]:
    """``(label, value, unit)`` rows of every result outside the segment table: measurements then evaluations.

    The label is ``"<group label>: <concept meaning>"``; values and units as :func:`group_rows` gives them.
    """
    rows: list[tuple[str, str, str]] = []
    for group in content.groups:
        if segment_of(group) is not None:
            continue
        rows.extend((f"{group.label}: {concept}", value, unit) for concept, value, unit in group_rows(group, content, templates))
    return rows


def is_model_group(group: MeasurementGroup) -> bool:
    """Whether ``group`` is a model output (AI prediction): it has a probability or a heat map."""
    return any(m.quantity == MODEL_PROBABILITY for m in group.measurements) or group.explanation_image is not None


def _summary_position(group: MeasurementGroup) -> int | None:
    """Position in :data:`SUMMARY_KEYS` of the group's first headline key, None when it is no summary group."""
    if _SEGMENT_SITE.match(group.site):
        return None
    if not is_model_group(group) and group.site not in _WHOLE_HEART_SITES:
        return None
    keys = [m.quantity for m in group.measurements] + [e.quantity for e in group.evaluations]
    positions = [SUMMARY_KEYS.index(k) for k in keys if k in SUMMARY_KEYS]
    if not positions:
        return len(SUMMARY_KEYS) if is_model_group(group) else None
    return min(positions)


def is_summary_group(group: MeasurementGroup) -> bool:
    """Whether ``group`` holds headline results (see :data:`SUMMARY_KEYS`)."""
    return _summary_position(group) is not None


def reading_order(content: ReportContent) -> tuple[MeasurementGroup, ...]:
    """``content.groups`` in reading order: summary groups, other non-segment groups, segment groups.

    Summary groups are ordered by their first headline key's position in :data:`SUMMARY_KEYS`
    (perfusion scores before flow, function and model outputs); ties, and the other two parts,
    keep the content's order. Groups at a segment site come last even without measurements.
    """
    summary: list[tuple[int, int, MeasurementGroup]] = []
    others: list[MeasurementGroup] = []
    segments: list[MeasurementGroup] = []
    for index, group in enumerate(content.groups):
        position = _summary_position(group)
        if position is not None:
            summary.append((position, index, group))
        elif _SEGMENT_SITE.match(group.site):
            segments.append(group)
        else:
            others.append(group)
    return tuple(g for _, _, g in sorted(summary, key=lambda item: item[:2])) + tuple(others) + tuple(segments)


def summary_rows(group: MeasurementGroup, content: ReportContent, templates: Templates) -> list[tuple[str, str, str]]:
    """The headline rows (:func:`group_rows` restricted to :data:`SUMMARY_KEYS`) of a summary group."""
    return group_rows(group, content, templates, SUMMARY_KEYS)
