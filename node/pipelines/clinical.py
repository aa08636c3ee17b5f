"""A study's clinical inputs (height, weight, sex, age, reason for the examination): the one way a
pipeline gets them.

Two sources, in this order: the images' own Patient and Patient Study attributes (Patient's Size
(0010,1020) in m, Patient's Weight (0010,1030) in kg, Patient's Sex (0010,0040), Patient's Age
(0010,1010)), then the modality worklist's answer that the node sends with the run
(:attr:`node.pipelines.options.RunConfig.clinical`, :mod:`node.workflow.worklist`). What the images
say wins; the worklist fills what they lack. Each fact remembers where it came from, and
:meth:`ClinicalInputs.words` says it in the report's notes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom import Dataset

__all__ = ["ClinicalInputs", "age_years", "clinical_inputs", "height_m", "weight_kg"]

#: plausible ranges: a value outside is treated as absent (a typo in cm or lb, an empty default of 0)
_HEIGHT_M = (0.3, 2.6)
_WEIGHT_KG = (1.0, 400.0)
_AGE_UNITS = {"Y": 1.0, "M": 1 / 12, "W": 7 / 365.25, "D": 1 / 365.25}


@dataclass(frozen=True)
class ClinicalInputs:
    """Clinical facts of one study: ``height_m`` (m), ``weight_kg`` (kg), ``sex`` (``M``/``F``/``O``),
    ``age_years`` (years), ``reason`` (reason for the requested procedure, free text), each None/'' when
    unknown; ``sources``: fact name -> ``images`` or ``worklist``."""

    height_m: float | None = None
    weight_kg: float | None = None
    sex: str | None = None
    age_years: float | None = None
    reason: str = ""
    sources: dict[str, str] = field(default_factory=dict)

    @property
    def from_worklist(self) -> bool:
        """Whether any fact came from the worklist (the images lacked it)."""
        return "worklist" in self.sources.values()

    @property
    def bmi(self) -> float | None:
        """Body-mass index, kg/m2 (None unless height and weight are known)."""
        if self.height_m is None or self.weight_kg is None:
            return None
        return self.weight_kg / (self.height_m * self.height_m)

    def words(self) -> str:
        """One line for the report's notes, e.g. ``Clinical inputs: height 1.78 m (worklist), weight 92 kg
        (worklist), BMI 29.0 kg/m2, sex M (images), age 61 y (images)``; '' when nothing is known."""
        parts = []
        if self.height_m is not None:
            parts.append(f"height {self.height_m:.2f} m ({self.sources.get('height_m', 'images')})")
        if self.weight_kg is not None:
            parts.append(f"weight {self.weight_kg:g} kg ({self.sources.get('weight_kg', 'images')})")
        if self.bmi is not None:
            parts.append(f"BMI {self.bmi:.1f} kg/m2")
        if self.sex:
            parts.append(f"sex {self.sex} ({self.sources.get('sex', 'images')})")
        if self.age_years is not None:
            parts.append(f"age {self.age_years:.0f} y ({self.sources.get('age_years', 'images')})")
        if self.reason:
            parts.append(f"reason for the examination: {self.reason} ({self.sources.get('reason', 'worklist')})")
        return "Clinical inputs: " + ", ".join(parts) if parts else ""


def _number(value: object, plausible: tuple[float, float]) -> float | None:
    if value in (None, ""):
        return None
    try:
        number = float(str(value))
    except ValueError:
        return None
    return number if plausible[0] <= number <= plausible[1] else None


def height_m(value: object) -> float | None:
    """A Patient's Size (0010,1020) value in m, None when absent or implausible."""
    return _number(value, _HEIGHT_M)


def weight_kg(value: object) -> float | None:
    """A Patient's Weight (0010,1030) value in kg, None when absent or implausible."""
    return _number(value, _WEIGHT_KG)


def age_years(value: object) -> float | None:
    """A Patient's Age (0010,1010, AS: ``061Y``, ``018M``, ``003W``, ``012D``) in years, None when absent."""
    text = str(value or "").strip().upper()
    if len(text) == 4 and text[:3].isdigit() and text[3] in _AGE_UNITS:
        return round(int(text[:3]) * _AGE_UNITS[text[3]], 2)
    return None


def clinical_inputs(headers: Sequence[Dataset], given: Mapping[str, Any] | None = None) -> ClinicalInputs:
    """The clinical inputs of a study from its instances' ``headers`` and the worklist's ``given`` facts.

    ``given`` uses the keys of :data:`node.workflow.worklist.CLINICAL_KEYS` (``height_m``, ``weight_kg``,
    ``sex``, ``age_years``, ``reason``). For each fact the first header with a plausible value wins, else
    ``given``'s.
    """
    given = given or {}
    found: dict[str, Any] = {}
    sources: dict[str, str] = {}
    readers = {
        "height_m": lambda ds: height_m(ds.get("PatientSize")),
        "weight_kg": lambda ds: weight_kg(ds.get("PatientWeight")),
        "sex": lambda ds: (str(ds.get("PatientSex", "") or "").strip().upper() or None),
        "age_years": lambda ds: age_years(ds.get("PatientAge")),
    }
    for name, read in readers.items():
        value = next((v for v in (read(ds) for ds in headers) if v is not None), None)
        if name == "sex" and value not in ("M", "F", "O"):
            value = None
        if value is not None:
            found[name], sources[name] = value, "images"
    checks = {"height_m": _HEIGHT_M, "weight_kg": _WEIGHT_KG, "age_years": (0.0, 130.0)}
    for name, plausible in checks.items():
        if name not in found and _number(given.get(name), plausible) is not None:
            found[name], sources[name] = float(given[name]), "worklist"
    if "sex" not in found and str(given.get("sex", "")).upper() in ("M", "F", "O"):
        found["sex"], sources["sex"] = str(given["sex"]).upper(), "worklist"
    reason = str(given.get("reason", "") or "").strip()
    if reason:
        sources["reason"] = "worklist"
    return ClinicalInputs(found.get("height_m"), found.get("weight_kg"), found.get("sex"), found.get("age_years"),
                          reason, sources)
