"""The report's results as text tables, shared by the PDF summary and the table screens.

* :func:`segment_table`: one row per AHA segment, one column per (state, quantity) found in
  the segment groups that carry measurements (SPECT: stress/rest uptake and scores; PET:
  rest MBF, stress MBF, MFR and the impaired-reserve evaluation), in content order;
* :func:`global_rows`: ``(label, value, unit)`` for every other result: the non-segment
  groups and the segment groups without measurements (e.g. a quality flag at a segment),
  measurements then coded evaluations, so that no reported result is left out.

Numbers are formatted by :func:`format_value` with the quantity's ``decimals``; column heads
and evaluation cells use the templates' short labels (``short_label`` in ``concepts.toml``
and ``evaluations.toml``; a head may have several lines).
"""

from __future__ import annotations

import re

import numpy as np

from node.quant.segments import N_SEGMENTS
from node.results.content import MeasurementGroup, ReportContent
from node.results.templates import Templates

__all__ = ["format_value", "segment_of", "segment_table", "global_rows"]

_SEGMENT_SITE = re.compile(r"^aha_(\d+)$")


def format_value(value: float, decimals: int | None = None) -> str:
    """A number as a table shows it: with ``decimals`` decimals, else integers without decimals,
    1 decimal from 1 and 2 decimals below 1."""
    if not np.isfinite(value):
        return "-"
    if value == 0:
        value = 0.0  # no "-0"
    if decimals is not None:
        text = f"{value:.{decimals}f}"
        return text[1:] if text.startswith("-") and float(text) == 0 else text
    if float(value).is_integer() and abs(value) < 1000:
        return f"{value:.0f}"
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2f}"


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


def global_rows(content: ReportContent, templates: Templates) -> list[tuple[str, str, str]]:
    """``(label, value, unit)`` rows of every result outside the segment table: measurements then evaluations.

    The label is ``"<group label>: <concept meaning>"``; evaluation values are the templates'
    short labels; units are UCUM codes (``"1"`` left blank, annotations without braces:
    ``{score}`` shown as ``score``, ``{ratio}`` as ``ratio``).
    """
    rows: list[tuple[str, str, str]] = []
    for group in content.groups:
        if segment_of(group) is not None:
            continue
        prefix = group.label
        for m in group.measurements:
            quantity = templates.quantity(m.quantity, content.pipeline)
            unit = "" if m.unit == "1" else m.unit.strip("{}")
            rows.append((f"{prefix}: {quantity.code.meaning}", format_value(m.value, quantity.decimals), unit))
        for e in group.evaluations:
            concept = templates.evaluation_concept(e.quantity).meaning
            rows.append((f"{prefix}: {concept}", templates.evaluation_value_label(e.value), ""))
    return rows
