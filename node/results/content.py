"""The content of a measurement report, independent of DICOM encoding.

Pipelines fill a :class:`ReportContent`; ``node.results`` turns it into DICOM
objects (TID 1500 SR, Secondary Capture bull's-eyes and heat maps, an
Encapsulated PDF). Everything here is named by *keys*; the codes, concept
names, units' display names and series attributes for those keys live in
``dicom_templates/`` so that a new pipeline adds content, not code paths.

Keys used by the SPECT and PET pipelines (extend the templates, not the code, for new ones):

* sites: ``aha_1`` .. ``aha_17``, ``left_ventricle``, ``lv_myocardium``,
  ``heart``, ``territory_lad``, ``territory_lcx``, ``territory_rca``
* states: ``stress``, ``rest``, ``difference`` or None
* measurement quantities (value, UCUM unit): ``relative_uptake`` (%),
  ``segment_score`` ({score}), ``edv`` (ml), ``esv`` (ml), ``lvef`` (%),
  ``stroke_volume`` (ml), ``tid_ratio`` (1), ``sss``/``srs``/``sds`` ({score}),
  ``tpd_stress``/``tpd_rest``/``tpd_ischemic`` (%), ``wall_motion`` (mm),
  ``thickening`` (%), ``phase_peak``/``phase_sd``/``phase_bandwidth`` (deg),
  ``phase_skewness``/``phase_kurtosis``/``phase_entropy`` (1),
  ``probability`` (1); PET: ``mbf`` (ml/min/g), ``mfr`` ({ratio}),
  ``mbf_rpp_corrected`` (ml/min/g), ``mfr_rpp_corrected`` ({ratio}),
  ``blood_fraction`` (1), ``heart_rate`` (/min), ``systolic_pressure`` (mm[Hg]),
  ``rate_pressure_product`` (mm[Hg]/min)
* findings: ``perfusion_normal``, ``perfusion_abnormal``, ``perfusion_equivocal``,
  ``defect_reversible``, ``defect_partially_reversible``, ``defect_fixed``,
  ``lv_function``, ``dyssynchrony``, ``obstructive_cad``, ``abnormal_perfusion``,
  ``high_risk``, ``crt_response``; PET: ``myocardial_blood_flow``,
  ``myocardial_flow_reserve``, ``haemodynamics``, ``mbf_quality``
* evaluation concepts: ``classification``, ``perfusion_category``, ``lv_function_category``,
  ``defect_type``, ``dyssynchrony_category``, ``risk_category``, ``normality``,
  ``study_impression``; PET:
  ``impaired_flow_reserve`` (values ``present``/``absent``), ``quality_flag`` (one value per
  code of ``node.quant.mbf.QUALITY_FLAG_CODES``, same keys)
* evaluation values: ``present``, ``absent``, ``undetermined``, ``indeterminate`` (a model
  probability inside its indeterminate band), ``normal``,
  ``abnormal``, ``high_risk``, ``low_risk``; PET quality flags: ``bolus_start_missed``,
  ``input_peak_late``, ``rv_peak_after_lv``, ``input_near_wall``, ``unstable_fit``,
  ``blood_fraction_high``, ``motion``, ``rest_mbf_implausible``, ``stress_mbf_implausible``,
  ``tracer_code_missing``

Besides the measurement groups and bull's-eyes (:class:`MapImage`, optionally with
contour lines), a report may carry curve plots (:class:`CurvePlot`, e.g. time-activity
curves, each rendered as one Secondary Capture) and voxel maps in the source images' space
(:class:`ParametricVolume`, each written as a DICOM Parametric Map).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from node.config import OutputOptions

__all__ = [
    "SourceInstance",
    "Algorithm",
    "Measurement",
    "Evaluation",
    "MeasurementGroup",
    "MapImage",
    "Curve",
    "CurvePlot",
    "ParametricVolume",
    "ReportContent",
    "ReportContext",
]


@dataclass(frozen=True)
class SourceInstance:
    """A received instance the results were computed from."""

    study_instance_uid: str
    series_instance_uid: str
    sop_class_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class Algorithm:
    """TID 4019 algorithm identification plus the model card shown to people.

    ``parameters`` are ``key=value`` strings, including ``weights=sha256:...``
    for learned models so that any change of weights changes the record.
    """

    name: str
    version: str
    parameters: tuple[str, ...] = ()
    training_data: str = ""
    intended_use: str = "Research use only; not clinically validated."


@dataclass(frozen=True)
class Measurement:
    """A numeric result: ``quantity`` key, value and UCUM unit."""

    quantity: str
    value: float
    unit: str


@dataclass(frozen=True)
class Evaluation:
    """A coded qualitative result: ``quantity`` key and value key."""

    quantity: str
    value: str


@dataclass(frozen=True)
class MeasurementGroup:
    """One TID 1501 group: one finding at one site in one state."""

    label: str  # human tracking identifier, e.g. "Stress perfusion AHA segment 7"
    finding: str  # finding key
    site: str  # site key
    state: str | None
    algorithm: Algorithm
    measurements: tuple[Measurement, ...] = ()
    evaluations: tuple[Evaluation, ...] = ()
    explanation_image: str | None = None  # key of a MapImage (Grad-CAM heat map)


@dataclass(frozen=True)
class MapImage:
    """A polar map to render as a bull's-eye Secondary Capture image.

    ``values`` is the canonical polar map ``[n_u, n_psi]`` of
    :class:`node.quant.segments.PolarGrid` (row 0 apex, azimuth from anterior
    toward septum). ``overlay_on`` names another MapImage drawn underneath (for
    heat maps). ``derivation`` is a key: ``polar_map`` or ``gradcam``.
    ``contour_levels`` are values (in ``unit``) drawn as iso-lines over the map, the
    lowest dashed and the others solid (e.g. ``(1.5, 2.0)`` on a flow-reserve map).

    Optional display fields (defaults keep older content valid): ``role`` places the map on
    the results screen (:mod:`node.results.screen`): ``perfusion`` (a state's perfusion or
    flow map, first row), ``perfusion_change`` (rest-minus-stress difference, flow reserve:
    beside them), ``extent`` (a "blackout" map against the normal limits, second row),
    ``function``, ``phase``; None: after those. ``subtitle`` is a line under the title that
    adds what the title does not say (tracer, state, normal limits, what the numbers are).
    ``quantity`` is the ``concepts.toml`` key of the printed segment values, whose
    ``decimals`` format them (one rule for maps, tables and screens). ``blackout`` is a bool
    ``[n_u, n_psi]`` mask of the cells outside the normal limits, drawn black.
    ``muted_rim_rows`` outermost (basal) rows are drawn pale: the valve-plane rim, where the
    normal limits' own mean uptake falls, so that a normal base does not read as a defect.
    """

    key: str
    title: str
    values: np.ndarray
    unit: str
    value_range: tuple[float, float]
    colormap: str = "turbo"
    segment_values: tuple[float, ...] | None = None  # 17 values printed on the segments
    derivation: str = "polar_map"
    algorithm: Algorithm | None = None
    overlay_on: str | None = None
    contour_levels: tuple[float, ...] = ()
    role: str | None = None
    subtitle: str = ""
    quantity: str | None = None
    blackout: np.ndarray | None = None
    muted_rim_rows: int = 0


@dataclass(frozen=True)
class Curve:
    """One curve of a :class:`CurvePlot`.

    ``x`` and ``y`` are ``[n]`` arrays in the plot's units (time curves: ``x`` in
    seconds, frame mid-times). ``style`` is ``"points"`` (measured values, drawn as
    markers) or ``"line"`` (a model curve, drawn as a line).
    """

    label: str  # "LV blood", "RV blood", "LAD", "LAD fit", ...
    x: np.ndarray
    y: np.ndarray
    style: str = "points"


@dataclass(frozen=True)
class CurvePlot:
    """A plot of curves (e.g. time-activity curves with their model fits), rendered as one SC image.

    ``x_label`` and ``y_label`` name the axes with their units, e.g. ``"Time after
    injection (s)"`` and ``"Activity concentration (kBq/mL)"``. ``role`` (optional) places
    the plot on the results screen: ``volume_curve``, ``phase_histogram``, ``time_activity``.
    """

    key: str
    title: str
    x_label: str
    y_label: str
    curves: tuple[Curve, ...]
    role: str | None = None


@dataclass(frozen=True)
class ParametricVolume:
    """A voxel map in the space of the source images, written as a DICOM Parametric Map.

    ``values`` is float32 ``[slice, row, column]`` on the grid of the source images;
    ``source_sop_instance_uids`` names one single-frame source instance per slice, in
    slice order (their datasets must be among the ``sources`` given to
    :func:`node.results.build_outputs`; headers suffice). ``quantity`` is a
    ``concepts.toml`` key (e.g. ``mbf``) and ``unit`` its UCUM unit (``ml/min/g``).
    """

    key: str
    title: str
    quantity: str
    unit: str
    state: str | None
    values: np.ndarray
    source_sop_instance_uids: tuple[str, ...]
    algorithm: Algorithm | None = None


@dataclass(frozen=True)
class ReportContent:
    """Everything one pipeline run reports about one study."""

    pipeline: str
    pipeline_version: str
    procedure: str  # key, e.g. "nm_myocardial_perfusion"
    study_instance_uid: str
    sources: tuple[SourceInstance, ...]
    groups: tuple[MeasurementGroup, ...]
    images: tuple[MapImage, ...] = ()
    algorithms: tuple[Algorithm, ...] = ()
    notes: tuple[str, ...] = field(default=())  # lines for the PDF, e.g. disagreements, excluded features
    plots: tuple[CurvePlot, ...] = ()
    parametric_maps: tuple[ParametricVolume, ...] = ()
    description: str = ""  # one line for people naming the examination: tracer, protocol, normal limits


_OUTPUTS = OutputOptions()


@dataclass(frozen=True)
class ReportContext:
    """What the node tells the ``report`` step about the world outside the pipeline.

    ``device_uid``, ``device_name``, ``institution``: the node's identity (the SR's
    Device Observer UID and Name, Institution Name). ``predecessors`` are the SR documents
    of earlier runs of the same pipeline on the same study that the new report
    supersedes, as ``(study_instance_uid, series_instance_uid, sop_class_uid,
    sop_instance_uid)``. ``multiframe_screen``, ``pdf_summary`` and ``results_screen`` are the
    ``[outputs]`` settings (:class:`node.config.OutputOptions`, whose defaults these
    are). ``templates_dir``: the output templates to use; None = those shipped with
    the package (:mod:`node.resources`). The node makes it from its settings
    (:func:`node.pipelines.configure.report_context`).
    """

    device_uid: str
    device_name: str
    institution: str = ""
    predecessors: tuple[tuple[str, str, str, str], ...] = ()
    multiframe_screen: bool = _OUTPUTS.multiframe_screen
    pdf_summary: bool = _OUTPUTS.pdf_summary
    templates_dir: Path | None = None
    results_screen: bool = _OUTPUTS.results_screen
