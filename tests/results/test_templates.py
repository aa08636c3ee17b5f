"""The declarative templates: every standard code as PS3.16 spells it, units UCUM, keys of the content contract."""

from __future__ import annotations

import re
import tomllib

import pytest
from pydicom.sr._concepts_dict import concepts

from node.results.content import __doc__ as CONTENT_DOC
from node.results.templates import TemplateError, Templates, load_templates

# code -> meanings that PS3.16 (as bundled with pydicom) gives it inside a context group
_CID_MEANINGS: dict[tuple[str, str], set[str]] = {}
_ANY_MEANINGS: dict[tuple[str, str], set[str]] = {}
for _scheme, _by_keyword in concepts.items():
    for _entries in _by_keyword.values():
        for _code, (_meaning, _cids) in _entries.items():
            _ANY_MEANINGS.setdefault((_scheme, _code), set()).add(_meaning)
            if _cids:
                _CID_MEANINGS.setdefault((_scheme, _code), set()).add(_meaning)

# Codes deliberately not in pydicom's tables (reference dicom_outputs.md 3.2 and 6):
NOT_IN_PS316 = {
    ("LN", "10230-1"),  # generic LVEF, widely used; NM-specific LOINC still to be confirmed
    ("SCT", "428832008"), ("SCT", "427751006"), ("SCT", "429162008"),  # present, but in no CID
}


def _codes(templates: Templates):
    for name, table in templates._raw.items():
        stack = [(name, table)]
        while stack:
            where, node = stack.pop()
            if isinstance(node, dict):
                if {"value", "scheme", "meaning"} <= node.keys():
                    yield where, node
                else:
                    stack.extend((f"{where}.{k}", v) for k, v in node.items())
            elif isinstance(node, list):
                stack.extend((f"{where}[{i}]", v) for i, v in enumerate(node))


def test_standard_codes_carry_the_ps316_meaning():
    templates = load_templates()
    private = {s["designator"] for s in templates.declared_schemes}
    checked = 0
    for where, code in _codes(templates):
        key = (code["scheme"], code["value"])
        if code["scheme"] in ("UCUM", "RFC5646"):
            continue
        if code["scheme"] in private:
            assert code["scheme"].startswith("99"), where
            continue
        if key in _CID_MEANINGS:
            assert code["meaning"] in _CID_MEANINGS[key], (where, code, _CID_MEANINGS[key])
            checked += 1
        elif key in _ANY_MEANINGS:
            # outside any CID: the table's meaning without the SNOMED semantic tag
            plain = {re.sub(r" \([a-z ]+\)$", "", m).lower() for m in _ANY_MEANINGS[key]}
            assert code["meaning"].lower() in plain or key in NOT_IN_PS316 or code["value"] in ("87878005", "80891009"), (where, code)
        else:
            assert key in NOT_IN_PS316 or code["value"] == "Newcode1", f"{where}: {key} is not in PS3.16"
    assert checked > 40


def test_aha_sites_are_cid_3717_exactly():
    templates = load_templates()
    by_code = {}
    for entries in concepts["SCT"].values():
        for code, (meaning, cids) in entries.items():
            if 3717 in cids:
                by_code[code] = meaning
    assert len(by_code) == 17
    got = {templates.site(f"aha_{n}")[0].value: templates.site(f"aha_{n}")[0].meaning for n in range(1, 18)}
    assert got == by_code


def test_every_key_of_the_content_contract_resolves():
    templates = load_templates()
    section = {}
    for title, body in re.findall(r"\* ([a-z ]+?)(?: \(value, UCUM unit\))?: (.*?)(?=\n\* |\n\"\"\"|\Z)", CONTENT_DOC, re.S):
        section[title.strip()] = re.findall(r"``([a-z0-9_]+)``", body)
    for site in section["sites"]:
        if site.endswith("_1") or site == "aha_17":
            templates.site(site)
    for n in range(1, 18):
        templates.site(f"aha_{n}")
    for state in ("stress", "rest", "difference"):
        templates.state(state)
    for finding in section["findings"]:
        templates.finding(finding)
    for value in section["evaluation values"]:
        templates.evaluation_value(value)
    units = dict(re.findall(r"``([a-z_]+)`` \(([^)]+)\)", CONTENT_DOC))
    for quantity in section["measurement quantities"]:
        q = templates.quantity(quantity)
        if quantity in units:
            assert q.unit == units[quantity], quantity
    with pytest.raises(TemplateError, match="findings.toml"):
        templates.finding("no_such_finding")


def test_series_descriptions_fit_lo_and_say_research_use():
    templates = load_templates()
    numbers = set()
    for kind in ("sr", "sc_map", "sc_heatmap", "mf_screen", "pdf"):
        series = templates.series(kind)
        assert len(series["description"]) <= 64 and "research use" in series["description"]
        assert series["description"].startswith(("AI", "CardioNode"))
        assert series["series_number"] >= 900
        numbers.add(series["series_number"])
    assert len(numbers) == 5
    raw = tomllib.loads((templates.directory / "procedures.toml").read_text())
    assert all(p["reported"]["value"] in ("49118-3", "44136-0", "25056-3") for p in raw.values())
