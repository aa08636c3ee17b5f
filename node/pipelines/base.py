"""The pipelines interface: what a study kind declares and how the node runs it.

A pipeline declares

* which studies it accepts: :class:`SeriesRule` objects over the routing
  attributes of each series (:mod:`node.pipelines.routing`: modality, SOP
  class, image type, PET series kind, radiopharmaceutical code, tracer,
  acquisition state, series description);
* which series it needs before a study counts as complete (the rules marked
  ``required``);
* its steps, each bound to a queue: ``analyse`` (``cpu``: DICOM to volumes to
  quantities), ``predict`` (``gpu``: deep-learning models) and ``report``
  (``cpu``: the DICOM result objects).

Pipelines know nothing of Celery, the ledger or the network: the queue layer
calls these methods with plain values, and every step must be deterministic so
that a redelivered task produces the same result.

A pipeline may declare options (:attr:`Pipeline.options_model`, the site's
``[pipelines.<name>]`` table). Each run's steps execute on a copy made by
:meth:`Pipeline.configured` with the run's :class:`~node.pipelines.options.RunConfig`
(options, models folder, clinical file), which the node sends in every step message;
steps read ``self.options`` and ``self.run_config``, never the environment.
"""

from __future__ import annotations

import copy
import re
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

from pydicom import Dataset

from node.pipelines.options import OptionsError, PipelineOptions, RunConfig, option_problems
from node.pipelines.routing import SeriesSummary, StudySummary, kind_words

if TYPE_CHECKING:  # the report step's types; results is imported when a report is built
    from node.results.content import ReportContent, ReportContext

__all__ = [
    "SeriesRule",
    "Acceptance",
    "Step",
    "Pipeline",
    "source_header",
]


@dataclass(frozen=True)
class SeriesRule:
    """A condition one series must meet; every field left empty matches anything.

    ``image_type_values`` matches when any of the given values appears anywhere
    in Image Type (0008,0008), ``pet_series_kinds`` when the series' PET kind
    (:func:`node.imaging.pet.pet_series_kind`: ``dynamic``, ``static``, ``gated``,
    ``whole_body``, ``unknown``) is one of them; ``tracers``
    when the series' tracer key (:func:`node.imaging.dicom_tracer.tracer_of`:
    the coded radiopharmaceutical, else its name) is one of them; ``states`` when the series' acquisition state
    (:mod:`node.imaging.states`, the rule loading uses too) is one of them;
    ``mr_series_roles`` when the MR series role (:func:`node.imaging.mr.mr_series_role`: ``lge_mag``,
    ``lge_psir``, ``cine_sax`` ...) is one of them;
    ``description_pattern`` is a case-insensitive regular expression searched
    in Series Description (0008,103E), for site pipelines with their own
    naming (a pipeline that tells stress from rest uses ``states``).
    """

    name: str
    modalities: frozenset[str] = frozenset()
    sop_class_uids: frozenset[str] = frozenset()
    image_type_values: frozenset[str] = frozenset()
    radiopharmaceutical_codes: frozenset[str] = frozenset()
    pet_series_kinds: frozenset[str] = frozenset()
    tracers: frozenset[str] = frozenset()
    states: frozenset[str] = frozenset()
    mr_series_roles: frozenset[str] = frozenset()
    description_pattern: str = ""
    required: bool = True

    def mismatch(self, series: SeriesSummary) -> str | None:
        """Return why ``series`` does not match this rule, or None if it matches."""
        if self.modalities and series.modality not in self.modalities:
            return f"modality {series.modality or '(none)'} not in {sorted(self.modalities)}"
        if self.sop_class_uids and series.sop_class_uid not in self.sop_class_uids:
            return f"SOP class {series.sop_class_uid} not accepted"
        if self.image_type_values and not self.image_type_values.intersection(series.image_type):
            return f"image type {'/'.join(series.image_type) or '(none)'} has none of {sorted(self.image_type_values)}"
        if self.radiopharmaceutical_codes and not self.radiopharmaceutical_codes.intersection(
            series.radiopharmaceutical_codes
        ):
            return "radiopharmaceutical code not accepted"
        if self.pet_series_kinds and series.pet_series_kind not in self.pet_series_kinds:
            shown = series.pet_series_kind or "not PET"
            return (f"PET series kind is {shown} (Series Type (0054,1000), Enhanced PET: Image Type value 3), "
                    f"not {'/'.join(sorted(self.pet_series_kinds))}")
        if self.tracers and series.tracer not in self.tracers:
            return f"tracer {series.tracer or '(not recognised)'} not in {sorted(self.tracers)}"
        if self.states and series.state not in self.states:
            return f"acquisition state is {series.state} (from the series description), not {'/'.join(sorted(self.states))}"
        if self.mr_series_roles and series.mr_series_role not in self.mr_series_roles:
            return (f"MR series role is {series.mr_series_role or '(none)'} (node.imaging.mr.mr_series_role), "
                    f"not {'/'.join(sorted(self.mr_series_roles))}")
        if self.description_pattern and not re.search(
            self.description_pattern, series.series_description, re.IGNORECASE
        ):
            return f"series description does not match /{self.description_pattern}/"
        return None

    def matches(self, series: SeriesSummary) -> bool:
        return self.mismatch(series) is None


@dataclass(frozen=True)
class Acceptance:
    """A pipeline's decision on a study."""

    accepted: bool
    complete: bool  # every required rule has a matching series, with all the instances it says it has
    reason: str  # words for the ledger and `cardionode status`
    series_by_rule: dict[str, tuple[str, ...]] = field(default_factory=dict)




def source_header(ds: Dataset) -> Dataset:
    """A copy of ``ds`` without Pixel Data (elements shared, not deep-copied): what ``report`` needs of a source."""
    header = Dataset()
    for element in ds:
        if element.tag != 0x7FE00010:
            header.add(element)
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    return header


@dataclass(frozen=True)
class Step:
    """One step of a pipeline and the queue it runs on (``cpu`` or ``gpu``)."""

    name: str
    queue: str


class Pipeline(ABC):
    """A study kind the node can process. Subclasses are registered by name."""

    #: registry key, also used in output UIDs and the ledger
    name: str
    #: changes whenever the pipeline's results could change
    version: str
    #: one line for `cardionode status` and the docs
    title: str
    #: series rules; a study is complete for this pipeline when every required rule matches
    series_rules: tuple[SeriesRule, ...]

    steps: tuple[Step, ...] = (Step("analyse", "cpu"), Step("predict", "gpu"), Step("report", "cpu"))
    #: the type ``analyse`` and ``predict`` return: a dataclass whose fields hold numbers, strings,
    #: tuples, lists, dicts, NumPy arrays, pydicom Datasets and further dataclasses, all annotated.
    #: Between steps the queue stores it as JSON and ``.npy`` arrays (:mod:`node.queue.codec`); the
    #: dataclasses its annotations reach are the only ones a stored result may contain.
    result_type: ClassVar[type[Any]]

    #: whether a run may analyse the series of the study's states with those of another study of the patient
    #: (the earlier day of a two-day stress/rest protocol, ``run_config.pairing``, :mod:`node.workflow.pairing`):
    #: the pipeline then puts its results in the run's own study and names the other study's date
    pairs_across_studies: ClassVar[bool] = False
    #: the pydantic model of the ``[pipelines.<name>]`` options; the base model accepts none
    options_model: ClassVar[type[PipelineOptions]] = PipelineOptions
    #: the processing configuration the steps run with: defaults on the registered
    #: instance, a run's own on the copy :meth:`configured` returns
    run_config: RunConfig = RunConfig()

    def option_problems(self, options: Mapping[str, Any]) -> list[str]:
        """Why this pipeline refuses ``options`` (a ``[pipelines.<name>]`` table), in words; [] when fine."""
        return option_problems(self.options_model, options, f"pipelines.{self.name}")

    def configured(self, config: RunConfig) -> Self:
        """A copy of this pipeline whose steps run with ``config``.

        Raises :class:`~node.pipelines.options.OptionsError` when ``config.options``
        is not valid for :attr:`options_model`.
        """
        problems = self.option_problems(config.options)
        if problems:
            raise OptionsError("; ".join(problems))
        clone = copy.copy(self)
        clone.run_config = config
        return clone

    @property
    def options(self) -> PipelineOptions:
        """This run's options, validated by :attr:`options_model` (its defaults unless :meth:`configured`)."""
        return self.options_model.model_validate(dict(self.run_config.options))

    def needs(self) -> str:
        """What this pipeline needs, in plain words, from its required series rules
        (:func:`node.pipelines.routing.kind_words`): ``reconstructed stress and rest SPECT``."""
        groups: dict[tuple[str, str], list[str]] = {}
        for rule in self.series_rules:
            if not rule.required:
                continue
            modality = next(iter(sorted(rule.modalities)), "")
            pet_kind = next(iter(sorted(rule.pet_series_kinds)), "") if len(rule.pet_series_kinds) == 1 else ""
            words = kind_words(modality, rule.image_type_values, pet_kind)
            groups.setdefault(words, []).extend(s for s in sorted(rule.states) if s not in groups.get(words, []))
        phrases = [" ".join(w for w in (adjective, " and ".join(states), noun) if w)
                   for (adjective, noun), states in groups.items()]
        return " with ".join(phrases) or self.title

    def accept(self, study: StudySummary) -> Acceptance:
        """Decide whether this pipeline accepts ``study`` and whether it is complete."""
        matched: dict[str, tuple[str, ...]] = {}
        reasons: list[str] = []
        for rule in self.series_rules:
            uids = tuple(s.series_instance_uid for s in study.series if rule.matches(s))
            matched[rule.name] = uids
            if not uids:
                why = "; ".join(
                    f"{s.series_description or s.series_instance_uid[-12:]}: {rule.mismatch(s)}"
                    for s in study.series
                )
                reasons.append(f"no series for '{rule.name}'" + (f" ({why})" if why else ""))
        any_match = any(matched.values())
        required_ok = all(matched[r.name] for r in self.series_rules if r.required)
        if not any_match:
            return Acceptance(False, False, f"{self.name}: " + "; ".join(reasons), matched)
        if not required_ok:
            return Acceptance(True, False, f"{self.name}: " + "; ".join(reasons), matched)
        required_uids = {uid for r in self.series_rules if r.required for uid in matched[r.name]}
        partial = [s for s in study.series if s.series_instance_uid in required_uids and s.missing_instances]
        if partial:  # a series that says how many instances it has is whole only when they are all here
            waiting = "; ".join(f"{s.series_description or s.series_instance_uid[-12:]}: {s.instance_count} of "
                                f"{s.expected_instances} instances" for s in partial)
            return Acceptance(True, False, f"{self.name}: waiting for the rest of a series ({waiting})", matched)
        return Acceptance(True, True, f"{self.name}: all required series present", matched)

    @abstractmethod
    def analyse(self, instances: Sequence[Dataset]) -> Any:
        """``cpu`` step: DICOM instances of the study to a :attr:`result_type` value."""

    def predict(self, result: Any) -> Any:
        """``gpu`` step: add model predictions to ``result`` (a :attr:`result_type` value, as is the return
        value). Pipelines without models return it unchanged."""
        return result

    def report_content(self, result: Any) -> ReportContent | None:
        """What ``report`` encodes (:class:`~node.results.content.ReportContent`), for the report step and the
        previews of ``cardionode process``; None for a pipeline that builds its objects another way."""
        return None

    def summary(self, result: Any) -> dict[str, Any]:
        """Details of ``result`` beyond the report content for ``cardionode process``'s ``summary.json``
        (plain values and NumPy arrays, keyed by name); {} by default."""
        return {}

    @abstractmethod
    def report(self, result: Any, context: ReportContext) -> list[Dataset]:
        """``cpu`` step: the DICOM result objects (SR, SC, PDF ...) for ``result`` (for the shipped pipelines,
        :func:`node.results.build_outputs` of :meth:`report_content` with the source headers ``analyse`` kept)."""
