"""Load the declarative output templates from ``dicom_templates/``.

The templates map the *keys* of :mod:`node.results.content` (sites, findings,
quantities, evaluation values, procedures) to DICOM codes, and hold the series
attributes of each output object. Code in :mod:`node.results` never spells a
code value itself: a new pipeline or model adds entries to the TOML files.

The directory is the one the caller names (the setting ``templates_dir``, which
the node sends to the ``report`` step in :class:`~node.results.content.ReportContext`),
by default the templates shipped with the package (:func:`default_templates_dir`:
the repository's ``dicom_templates/``, installed as ``node.dicom_templates``, see
:mod:`node.resources`).
"""

from __future__ import annotations

import functools
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from highdicom.sr import CodedConcept

from node import resources

__all__ = [
    "TemplateError",
    "Code",
    "Quantity",
    "Templates",
    "default_templates_dir",
    "load_templates",
]


class TemplateError(ValueError):
    """A key that the templates do not define, or a malformed template file."""


@dataclass(frozen=True)
class Code:
    """A coded concept: value, coding scheme designator and meaning."""

    value: str
    scheme: str
    meaning: str

    def concept(self) -> CodedConcept:
        return CodedConcept(value=self.value, scheme_designator=self.scheme, meaning=self.meaning)


@dataclass(frozen=True)
class Quantity:
    """A NUM concept name, the UCUM unit its values must carry, its table column label and decimals.

    ``decimals`` (None: :func:`node.results.tables.format_value`'s default rule) is how many
    decimals tables print; the SR always carries the full value.
    """

    key: str
    code: Code
    unit: str
    unit_meaning: str
    short_label: str = ""
    decimals: int | None = None

    def unit_concept(self) -> CodedConcept:
        return CodedConcept(value=self.unit, scheme_designator="UCUM", meaning=self.unit_meaning)


def default_templates_dir() -> Path:
    """The folder of the templates shipped with the package (``node.dicom_templates``)."""
    return resources.default_templates_dir()


def _code(raw: Any, where: str) -> Code:
    try:
        return Code(value=str(raw["value"]), scheme=str(raw["scheme"]), meaning=str(raw["meaning"]))
    except (KeyError, TypeError) as exc:
        raise TemplateError(f"{where}: a code needs value, scheme and meaning ({exc})") from exc


class Templates:
    """Parsed ``dicom_templates/*.toml`` with lookups that name the file on a miss."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._raw: dict[str, dict[str, Any]] = {}
        for name in ("schemes", "concepts", "sites", "findings", "evaluations", "procedures", "series", "pipelines"):
            path = self.directory / f"{name}.toml"
            try:
                with path.open("rb") as fh:
                    self._raw[name] = tomllib.load(fh)
            except FileNotFoundError as exc:
                raise TemplateError(
                    f"template file {path} is missing (the setting templates_dir must name a folder with every template file)"
                ) from exc
            except tomllib.TOMLDecodeError as exc:
                raise TemplateError(f"template file {path} is not valid TOML: {exc}") from exc

    # --- helpers -------------------------------------------------------------------
    def _file(self, name: str) -> Path:
        return self.directory / f"{name}.toml"

    def _entry(self, name: str, key: str, table: dict[str, Any] | None = None) -> dict[str, Any]:
        table = self._raw[name] if table is None else table
        entry = table.get(key)
        if not isinstance(entry, dict):
            known = ", ".join(sorted(k for k, v in table.items() if isinstance(v, dict)))
            raise TemplateError(f"key {key!r} is not defined in {self._file(name)} (known: {known})")
        return entry

    # --- document level -------------------------------------------------------------
    @property
    def private_scheme(self) -> dict[str, str]:
        return dict(self._raw["schemes"]["private_scheme"])

    @property
    def declared_schemes(self) -> list[dict[str, str]]:
        """The private scheme first, then any other non-standard schemes used."""
        return [self.private_scheme, *[dict(s) for s in self._raw["schemes"].get("declared_schemes", [])]]

    def document_code(self, key: str) -> Code:
        return _code(self._entry("schemes", key, self._raw["schemes"]["document"]), f"{self._file('schemes')} [document.{key}]")

    @property
    def manufacturer(self) -> str:
        return str(self._raw["schemes"]["document"]["manufacturer"])

    @property
    def equipment_purpose(self) -> Code:
        return _code(self._raw["schemes"]["equipment"]["purpose"], f"{self._file('schemes')} [equipment]")

    @property
    def state_concept(self) -> Code:
        return _code(self._raw["schemes"]["state_concept"]["concept"], f"{self._file('schemes')} [state_concept]")

    def state(self, key: str) -> tuple[Code, str]:
        """Coded value and display label of an imaging state key (stress, rest, difference)."""
        entry = self._entry("schemes", key, self._raw["schemes"]["states"])
        return _code(entry["code"], f"{self._file('schemes')} [states.{key}]"), str(entry["label"])

    def state_short_label(self, key: str) -> str:
        """Short column label of an imaging state (tables)."""
        entry = self._entry("schemes", key, self._raw["schemes"]["states"])
        return str(entry.get("short_label", entry["label"]))

    def reference_code(self, key: str) -> Code:
        return _code(self._entry("schemes", key, self._raw["schemes"]["references"]), f"{self._file('schemes')} [references.{key}]")

    # --- content keys ---------------------------------------------------------------
    def quantity(self, key: str, pipeline: str | None = None) -> Quantity:
        """NUM concept for a measurement quantity key, after the pipeline's overrides."""
        resolved = self.pipeline(pipeline).get("concept_overrides", {}).get(key, key) if pipeline else key
        entry = self._entry("concepts", resolved)
        unit = str(entry["unit"])
        units = self._raw["concepts"].get("units", {})
        if unit not in units:
            raise TemplateError(f"unit {unit!r} of {resolved!r} has no display name in [units] of {self._file('concepts')}")
        return Quantity(
            key=key,
            code=_code(entry["code"], f"{self._file('concepts')} [{resolved}]"),
            unit=unit,
            unit_meaning=str(units[unit]),
            short_label=str(entry.get("short_label", key.replace("_", " "))),
            decimals=int(entry["decimals"]) if "decimals" in entry else None,
        )

    def site(self, key: str) -> tuple[Code, str]:
        """Finding-site code and display label of a site key."""
        entry = self._entry("sites", key)
        return _code(entry["code"], f"{self._file('sites')} [{key}]"), str(entry["label"])

    def finding(self, key: str) -> Code:
        return _code(self._entry("findings", key)["code"], f"{self._file('findings')} [{key}]")

    def evaluation_concept(self, key: str) -> Code:
        table = self._raw["evaluations"].get("concepts", {})
        return _code(self._entry("evaluations", key, table)["code"], f"{self._file('evaluations')} [concepts.{key}]")

    def evaluation_value(self, key: str) -> Code:
        table = self._raw["evaluations"].get("values", {})
        return _code(self._entry("evaluations", key, table)["code"], f"{self._file('evaluations')} [values.{key}]")

    def evaluation_concept_label(self, key: str) -> str:
        """Short label of an evaluation concept (table column heads): ``short_label``, else the meaning."""
        entry = self._entry("evaluations", key, self._raw["evaluations"].get("concepts", {}))
        return str(entry.get("short_label", self.evaluation_concept(key).meaning))

    def evaluation_value_label(self, key: str) -> str:
        """Short label of an evaluation value (table cells): ``short_label``, else the meaning."""
        entry = self._entry("evaluations", key, self._raw["evaluations"].get("values", {}))
        return str(entry.get("short_label", self.evaluation_value(key).meaning))

    def procedure(self, key: str) -> tuple[Code, Code, str]:
        """(Procedure Reported from CID 100, performed procedure, label) of a procedure key."""
        entry = self._entry("procedures", key)
        where = f"{self._file('procedures')} [{key}]"
        return _code(entry["reported"], where), _code(entry["performed"], where), str(entry.get("label", key))

    def series(self, kind: str) -> dict[str, Any]:
        """Series attributes of an output kind.

        Kinds: ``sr``, ``sc_map``, ``sc_heatmap``, ``sc_plot``, ``sc_table``, ``sc_screen``, ``pm``, ``mf_screen``, ``pdf``.
        """
        entry = dict(self._entry("series", kind))
        description = str(entry.get("description", ""))
        if len(description) > 64:
            raise TemplateError(f"{self._file('series')} [{kind}] description exceeds 64 characters (LO)")
        return entry

    def series_derivation(self, kind: str) -> Code:
        return _code(self.series(kind)["derivation"], f"{self._file('series')} [{kind}]")

    def pipeline(self, name: str | None) -> dict[str, Any]:
        """Per-pipeline mapping; pipelines without an entry use ``[default]``."""
        table = self._raw["pipelines"]
        if name and isinstance(table.get(name), dict):
            return dict(table[name])
        return dict(self._entry("pipelines", "default"))


@functools.lru_cache(maxsize=8)
def _load_cached(directory: str) -> Templates:
    return Templates(Path(directory))


def load_templates(directory: Path | None = None) -> Templates:
    """Load (once per process and directory) the templates from ``directory``; None = :func:`default_templates_dir`."""
    return _load_cached(str(Path(directory) if directory is not None else default_templates_dir()))
