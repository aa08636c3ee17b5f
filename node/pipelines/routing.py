"""Routing attributes: what the node reads from each received instance to choose a pipeline.

One extractor, :func:`routing_attributes`, used by the listener (stored once per
series in the ledger) and by ``cardionode process`` (read straight from the
files), so that a study is routed the same way whichever way it arrives. The
attributes are plain JSON values (strings and lists of strings), never patient
identifiers.

A series' attributes are those of its first instance, with list values united
over its instances in arrival order (:func:`merge_attributes`): a second
radiopharmaceutical code met in a later instance is kept.

What a series or study is, in the words a PACS administrator uses ("planar whole-body
images", "reconstructed stress SPECT"), comes from :func:`kind_words` alone: the reasons
why a study was not processed start with it (:func:`describe_study`, and
:meth:`node.pipelines.base.Pipeline.needs` for what a pipeline needs).

To route on a new attribute (a PET Series Type, an MR inversion time), add its
extractor to :data:`EXTRACTORS` and the field of the same name to
:class:`SeriesSummary`; the ledger, the listener and ``cardionode process``
need no change.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields

from pydicom import Dataset

from node.imaging.dicom_tracer import tracer_of
from node.imaging.mr import ROLE_WORDS, mr_role_reasons, mr_series_role
from node.imaging.pet import expected_instance_count, pet_series_kind
from node.imaging.states import acquisition_state

__all__ = [
    "AttributeValue",
    "EXTRACTORS",
    "routing_attributes",
    "merge_attributes",
    "SeriesSummary",
    "StudySummary",
    "kind_words",
    "describe_series",
    "describe_study",
]

#: a routing attribute's value: a string or a list of strings (JSON-serialisable)
AttributeValue = str | list[str]


def _text(keyword: str) -> Callable[[Dataset], str]:
    def extract(ds: Dataset) -> str:
        return str(ds.get(keyword) or "")

    extract.__doc__ = f"{keyword} as text ('' when absent)."
    return extract


def _multi(value: object) -> list[str]:
    """A multi-valued attribute (pydicom MultiValue, list or backslash-joined string) as a list."""
    if value is None or value == "":
        return []
    if isinstance(value, (str, bytes)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        return text.split("\\")
    if isinstance(value, Iterable):
        return [str(v) for v in value]
    return [str(value)]


def _image_type(ds: Dataset) -> list[str]:
    return _multi(ds.get("ImageType"))


def _tracer(ds: Dataset) -> str:
    return tracer_of(ds) or ""


def _expected_instances(ds: Dataset) -> str:
    count = expected_instance_count(ds)
    return "" if count is None else str(count)


def _radiopharmaceutical_codes(ds: Dataset) -> list[str]:
    """Code values of the Radiopharmaceutical Code Sequence items (CID 25), without repeats."""
    codes: list[str] = []
    for info in ds.get("RadiopharmaceuticalInformationSequence") or []:
        for code in info.get("RadiopharmaceuticalCodeSequence") or []:
            value = code.get("CodeValue")
            if value and str(value) not in codes:
                codes.append(str(value))
    return codes


#: attribute name -> extractor; the one place that says what routing reads from an instance
EXTRACTORS: dict[str, Callable[[Dataset], AttributeValue]] = {
    "modality": _text("Modality"),
    "sop_class_uid": _text("SOPClassUID"),
    "image_type": _image_type,
    "series_description": _text("SeriesDescription"),
    "radiopharmaceutical_codes": _radiopharmaceutical_codes,
    "tracer": _tracer,
    "pet_series_kind": pet_series_kind,
    "mr_series_role": mr_series_role,
    "mr_role_reasons": mr_role_reasons,
    "state": acquisition_state,
    "expected_instances": _expected_instances,
}


def routing_attributes(ds: Dataset) -> dict[str, AttributeValue]:
    """The routing attributes of one instance (JSON values; no patient data)."""
    return {name: extract(ds) for name, extract in EXTRACTORS.items()}


def merge_attributes(
    series: Mapping[str, AttributeValue], instance: Mapping[str, AttributeValue]
) -> dict[str, AttributeValue]:
    """A series' attributes after one more instance: first values kept, list values united in order."""
    merged = dict(series)
    for name, value in instance.items():
        if name not in merged:
            merged[name] = list(value) if isinstance(value, list) else value
        elif isinstance(value, list):
            known = merged[name]
            known_list = list(known) if isinstance(known, list) else [known]
            merged[name] = known_list + [v for v in value if v not in known_list]
    return merged


@dataclass(frozen=True)
class SeriesSummary:
    """What routing knows about one received series.

    Every field but ``series_instance_uid`` and ``instance_count`` is a routing
    attribute of the same name (:data:`EXTRACTORS`); ``state`` is ``stress``,
    ``rest`` or ``unknown`` (:mod:`node.imaging.states`).
    """

    series_instance_uid: str
    modality: str = ""
    sop_class_uid: str = ""
    image_type: tuple[str, ...] = ()
    series_description: str = ""
    radiopharmaceutical_codes: tuple[str, ...] = ()  # code values, e.g. SCT "424299003"
    tracer: str = ""  # tracer key (node.imaging.radiopharmaceuticals.tracer_of), "" when not recognised
    pet_series_kind: str = ""  # PET: dynamic, static, gated, whole_body, unknown (node.imaging.pet.pet_series_kind)
    mr_series_role: str = ""  # MR: lge_mag, lge_psir, ti_scout, cine_sax, cine_lax, map, other (node.imaging.mr)
    mr_role_reasons: tuple[str, ...] = ()  # the rules that decided mr_series_role, each naming its attribute
    state: str = "unknown"
    expected_instances: str = ""  # instances the series says it has (node.imaging.pet.expected_instance_count), "" unsaid
    instance_count: int = 0

    @property
    def missing_instances(self) -> int:
        """Instances the series says it has and that have not arrived (0 when it does not say)."""
        return max(int(self.expected_instances) - self.instance_count, 0) if self.expected_instances.isdigit() else 0

    @classmethod
    def from_attributes(
        cls, series_instance_uid: str, attributes: Mapping[str, AttributeValue], instance_count: int
    ) -> SeriesSummary:
        """From stored routing attributes; names this summary does not know are ignored (older or newer rows)."""
        values: dict[str, object] = {}
        for f in fields(cls):
            if f.name in attributes:
                value = attributes[f.name]
                values[f.name] = tuple(value) if isinstance(value, list) else value
        return cls(series_instance_uid=series_instance_uid, instance_count=instance_count, **values)  # type: ignore[arg-type]


@dataclass(frozen=True)
class StudySummary:
    """The series of one study as received so far, in order of arrival."""

    study_instance_uid: str
    series: tuple[SeriesSummary, ...]

    @classmethod
    def from_datasets(cls, datasets: Sequence[Dataset]) -> StudySummary:
        """The summary of one study's instances (files read by ``cardionode process``), as the ledger builds it."""
        if not datasets:
            raise ValueError("a study summary needs at least one instance")
        attributes: dict[str, dict[str, AttributeValue]] = {}
        counts: dict[str, int] = {}
        for ds in datasets:
            uid = str(ds.get("SeriesInstanceUID", ""))
            attributes[uid] = merge_attributes(attributes.get(uid, {}), routing_attributes(ds))
            counts[uid] = counts.get(uid, 0) + 1
        return cls(
            str(datasets[0].StudyInstanceUID),
            tuple(SeriesSummary.from_attributes(uid, attributes[uid], counts[uid]) for uid in attributes),
        )


# --------------------------------------------------------------------------- plain words
#: NM Image Type value 3 (PS3.3 C.8.4.7) -> (adjective, noun)
_NM_KINDS = {
    "RECON TOMO": ("reconstructed", "SPECT"),
    "RECON GATED TOMO": ("reconstructed gated", "SPECT"),
    "TOMO": ("unreconstructed", "SPECT projections"),
    "GATED TOMO": ("unreconstructed gated", "SPECT projections"),
    "WHOLE BODY": ("planar whole-body", "images"),
    "STATIC": ("planar static", "images"),
    "DYNAMIC": ("planar dynamic", "images"),
    "GATED": ("planar gated", "images"),
}
#: PET series kind (node.imaging.pet.pet_series_kind) -> adjective
_PET_KINDS = {"dynamic": "dynamic", "static": "static", "gated": "gated", "whole_body": "whole-body"}
#: modality -> noun, for modalities routing does not look into
_NOUNS = {"CT": "CT images", "MR": "MR images", "SR": "structured reports", "OT": "other images",
          "PR": "presentation states", "KO": "key object selections", "DOC": "documents"}


def kind_words(modality: str, image_types: Iterable[str] = (), pet_kind: str = "", mr_role: str = "") -> tuple[str, str]:
    """What a series of ``modality`` is, as ``(adjective, noun)``: ``("reconstructed", "SPECT")``,
    ``("planar whole-body", "images")``, ``("dynamic", "PET")``, ``("", "CT images")``.

    ``image_types``: NM Image Type values (value 3 decides; of several, a reconstruction wins,
    as a rule that accepts either); ``pet_kind``: the PET series kind; ``mr_role``: the MR series
    role (:func:`node.imaging.mr.mr_series_role`, e.g. ``("LGE magnitude", "MR images")``). An acquisition state
    goes between the two words (``reconstructed stress SPECT``).
    """
    if modality == "NM":
        known = [_NM_KINDS[v] for v in image_types if v in _NM_KINDS]
        return min(known, key=lambda k: (k[1] != "SPECT", len(k[0]))) if known else ("", "NM images")
    if modality == "PT":
        return _PET_KINDS.get(pet_kind, ""), "PET"
    if modality == "MR" and mr_role in ROLE_WORDS and mr_role != "other":
        return ROLE_WORDS[mr_role], "MR images"
    return "", _NOUNS.get(modality, f"{modality or 'unknown'} images")


def describe_series(series: SeriesSummary) -> str:
    """One series in plain words, e.g. ``reconstructed stress SPECT`` or ``planar whole-body images``."""
    value3 = series.image_type[2:3]
    adjective, noun = kind_words(series.modality, value3, series.pet_series_kind, series.mr_series_role)
    # NM and PET only: the words of an MR description ("DELAY" of an LGE) do not say stress or rest
    state = series.state if series.state in ("stress", "rest") and series.modality != "MR" else ""
    return " ".join(w for w in (adjective, state, noun) if w)


def describe_study(study: StudySummary) -> str:
    """What a study holds in plain words: its series' descriptions, each once, in order of arrival
    (``planar whole-body images``; ``reconstructed stress SPECT and CT images``)."""
    kinds = list(dict.fromkeys(describe_series(s) for s in study.series))
    if not kinds:
        return "no series"
    return kinds[0] if len(kinds) == 1 else ", ".join(kinds[:-1]) + " and " + kinds[-1]
