"""A whole synthetic cardiac MR study (cine + LGE) as DICOM data sets or files, with its truth.

:func:`build_cmr_study` draws one heart (:func:`node.synth.cmr.phantom.draw_anatomy`), renders
a cine short-axis stack, a long-axis cine, an LGE short-axis stack (magnitude and PSIR) of a
scar pattern and a TI scout at the mid slice, and writes them in a layout variant
(:data:`VARIANTS`):

* ``standard``: GE flavour, one series per stack, classic MR Image Storage;
* ``siemens``: Siemens flavour, cine short axis as one series per slice (UK Biobank style
  ``CINE_segmented_SAX_b<k>``), classic;
* ``philips``: Philips flavour, one series per stack, classic;
* ``enhanced``: Philips flavour, cine short axis and both LGE series as Enhanced MR (per-frame
  rescale; TI scout and long axis stay classic);
* ``reversed_instances``: ``standard`` with Instance Numbers backwards in every series;
* ``missing_slice``: ``standard`` without one mid-ventricular slice in the cine and LGE stacks;
* ``decoys``: Siemens flavour, one series per stack, plus a post-contrast MOLLI T1 map (role
  ``map``) of a basal, a mid and an apical LGE slice.

Problem layouts (:data:`PROBLEM_VARIANTS`, for a loader's detection tests):

* ``mixed_orientation``: ``standard``, but one mid LGE slice (magnitude and PSIR) is re-planned:
  its plane is tilted by :data:`TILT_DEG` about the image row direction through the same centre
  on the long axis (``truth.tilted_slices``);
* ``rescanned_fov``: ``siemens``, but one mid cine slice series is a re-scan with pixels
  :data:`RESCAN_PIXEL_FACTOR` times larger (a larger field of view, same matrix, same centre on
  the long axis; ``truth.rescanned_slices``).

All series share one Frame of Reference. :class:`CMRStudyTruth` says each series' true role
(``cine_sax``, ``cine_lax``, ``lge_mag``, ``lge_psir``, ``ti_scout``), which phantom slices it
holds, the slice positions along the normal, the gains, and the phantom truths
(:class:`~node.synth.cmr.phantom.LGETruth`, :class:`~node.synth.cmr.phantom.CineTruth`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

from node.synth.cmr.dicom import (
    MRFrame,
    MRSeriesInfo,
    MRSeriesWritten,
    classic_mr_series,
    enhanced_mr_series,
    sax_frames,
    sax_orientation,
    series_description,
)
from node.synth.cmr.phantom import (
    PATTERNS,
    TI_SCOUT_MS,
    CineImages,
    CineTruth,
    CMRAnatomy,
    LGEImages,
    LGETruth,
    cine_phantom,
    draw_anatomy,
    draw_pattern,
    lge_phantom,
    lge_plane,
    long_axis_cine,
    rician,
    t1_map,
    ti_scout,
)
from node.synth.spect.nm_dicom import PatientInfo, StudyInfo
from node.uids import deterministic_uid

__all__ = ["VARIANTS", "PROBLEM_VARIANTS", "TILT_DEG", "RESCAN_PIXEL_FACTOR", "CMRStudyTruth", "CMRStudy", "build_cmr_study", "save_cmr_study", "write_cmr_study"]

VARIANTS: tuple[str, ...] = ("standard", "siemens", "philips", "enhanced", "reversed_instances", "missing_slice",
                             "decoys")
#: layouts with a stack problem a loader must detect and name (kept apart from :data:`VARIANTS`)
PROBLEM_VARIANTS: tuple[str, ...] = ("mixed_orientation", "rescanned_fov")
_VENDOR = {"standard": "ge", "siemens": "siemens", "philips": "philips", "enhanced": "philips",
           "reversed_instances": "ge", "missing_slice": "ge", "decoys": "siemens", "mixed_orientation": "ge",
           "rescanned_fov": "siemens"}
TILT_DEG = 10.0
RESCAN_PIXEL_FACTOR = 1.2


@dataclass(frozen=True, eq=False)
class CMRStudyTruth:
    """What a correct loader and pipeline should find in a :class:`CMRStudy`.

    ``series_roles``: Series Instance UID -> role; ``series_slices``: UID -> phantom slice
    indices it holds (apex first); ``slice_position_mm``: ``[slice]`` position of each phantom
    slice along the short-axis normal (``dot(IPP, normal)``, apex -> base increasing);
    ``missing_slices``: phantom slices left out of the SAX stacks; ``gains``: UID -> stored
    units per signal unit; ``lge``/``cine``: the phantom truths; ``apex_mm``/``long_axis``: the
    LV frame (patient LPS); ``septal_angle_deg``: frame azimuth of the mid-septum;
    ``ti_scout_slice``: phantom slice of the TI scout; ``lge_inversion_time_ms``.
    """

    variant: str
    seed: int
    vendor: str
    pattern: str
    series_roles: dict[str, str]
    series_slices: dict[str, list[int]]
    slice_position_mm: np.ndarray
    missing_slices: tuple[int, ...]
    gains: dict[str, float]
    lge: LGETruth
    cine: CineTruth
    apex_mm: np.ndarray
    long_axis: np.ndarray
    septal_angle_deg: float
    ti_scout_slice: int
    lge_inversion_time_ms: float
    tilted_slices: tuple[int, ...] = ()
    rescanned_slices: tuple[int, ...] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary (roles, slices, LGE and cine scalars)."""
        return {
            "variant": self.variant, "seed": self.seed, "vendor": self.vendor, "pattern": self.pattern,
            "series_roles": dict(self.series_roles), "series_slices": {k: list(v) for k, v in self.series_slices.items()},
            "slice_position_mm": [round(float(v), 4) for v in self.slice_position_mm],
            "missing_slices": list(self.missing_slices), "gains": dict(self.gains),
            "lge": self.lge.summary(), "cine": self.cine.summary(),
            "apex_mm": [float(v) for v in self.apex_mm], "long_axis": [float(v) for v in self.long_axis],
            "septal_angle_deg": self.septal_angle_deg, "ti_scout_slice": self.ti_scout_slice,
            "lge_inversion_time_ms": self.lge_inversion_time_ms,
            "tilted_slices": list(self.tilted_slices), "rescanned_slices": list(self.rescanned_slices),
        }


@dataclass(frozen=True, eq=False)
class CMRStudy:
    """The data sets of a study (every series, writing order), the anatomy, the truth, what each
    writer returned, and the rendered phantoms (signal units, before the writers' gain)."""

    datasets: list[Dataset]
    anatomy: CMRAnatomy
    truth: CMRStudyTruth
    series: list[MRSeriesWritten]
    lge: LGEImages
    cine: CineImages


def build_cmr_study(
    variant: str = "standard",
    seed: int = 0,
    *,
    pattern: str | None = None,
    small: bool = False,
    n_phases: int | None = None,
) -> CMRStudy:
    """Render and write a cine + LGE study in layout ``variant`` (module docstring).

    ``pattern``: an LGE pattern of :data:`~node.synth.cmr.phantom.PATTERNS` (default: by seed).
    ``small``: a fast study for tests (128 x 128 pixels of 2.5 mm, 12 cine phases, 8 LAX phases,
    coarser supersampling); otherwise 256 x 256 pixels of 1.5 mm (FOV 384 mm), 25 phases.
    """
    if variant not in VARIANTS + PROBLEM_VARIANTS:
        raise ValueError(f"unknown CMR study variant {variant!r}; known: {VARIANTS + PROBLEM_VARIANTS}")
    rng = np.random.default_rng(seed)
    vendor = _VENDOR[variant]
    pattern_name = PATTERNS[seed % len(PATTERNS)] if pattern is None else pattern
    matrix, pixel = ((128, 128), 2.5) if small else ((256, 256), 1.5)
    phases = n_phases if n_phases is not None else (12 if small else 25)
    anatomy = draw_anatomy(rng, matrix=matrix, pixel_mm=pixel)
    lge = lge_phantom(anatomy, draw_pattern(pattern_name, rng), rng)
    cine = cine_phantom(anatomy, rng, n_phases=phases)
    scout_slice, scout = ti_scout(lge, rng)
    lax = long_axis_cine(anatomy, rng, n_phases=8 if small else phases, matrix=matrix, pixel_mm=pixel)

    uid = f"cmr-study:{variant}:{seed}"
    patient = PatientInfo(name=f"SYNTH^CMR{seed:04d}", patient_id=f"CMR{seed:06d}", birth_date="19640101",
                          sex="M" if seed % 2 == 0 else "F", age_years=62, weight_kg=78.0, height_m=1.74)
    started = datetime(2026, 1, 5, 9, 0, 0) + timedelta(days=seed % 300)
    study = StudyInfo(study_uid=deterministic_uid(uid, "study"), frame_of_reference_uid=deterministic_uid(uid, "for"),
                      study_date=started.strftime("%Y%m%d"), study_time=started.strftime("%H%M%S"),
                      accession_number=f"CMR{seed:08d}"[-16:], study_id=f"{seed % 10000}",
                      description="CARDIAC MR CINE LGE (SYNTHETIC)")
    st = anatomy.stack
    normal = np.cross(*np.reshape(sax_orientation(anatomy), (2, 3)))
    positions = np.array([float(np.dot(anatomy.slice_origin_mm(k), normal)) for k in range(st.n_slices)])
    missing: tuple[int, ...] = ()
    keep = list(range(st.n_slices))
    mids = [int(k) for k in np.nonzero(lge.truth.slice_ring == 2)[0]]
    mid = mids[len(mids) // 2] if mids else st.n_slices // 2
    if variant == "missing_slice":
        missing = (mid,)
        keep = [k for k in keep if k not in missing]
    reverse = variant == "reversed_instances"
    orientation = sax_orientation(anatomy)
    written: list[MRSeriesWritten] = []
    roles: dict[str, str] = {}
    slices: dict[str, list[int]] = {}

    def info(role: str, number: int, minutes: float, *, description: str | None = None, n: int = 1,
             orient: tuple[float, ...] = orientation, thickness: float = st.thickness_mm,
             spacing: float | None = st.spacing_mm, pixel_mm: float = st.pixel_mm) -> MRSeriesInfo:
        return MRSeriesInfo(role=role, vendor=vendor, series_uid=deterministic_uid(uid, "series", number),
                            series_number=number, description=description or series_description(vendor, role),
                            orientation=orient, pixel_mm=pixel_mm, thickness_mm=thickness, spacing_mm=spacing,
                            rr_ms=cine.truth.rr_ms, n_phases=n, acquired=started + timedelta(minutes=minutes),
                            reverse_instance_numbers=reverse)

    def add(result: MRSeriesWritten, held: list[int]) -> None:
        written.append(result)
        roles[result.info.series_uid] = result.info.role
        slices[result.info.series_uid] = held

    enhanced = variant == "enhanced"
    write = enhanced_mr_series if enhanced else classic_mr_series
    # long-axis cine
    lax_orient = tuple(float(v) for v in np.concatenate([lax.col_axis, lax.row_axis]))
    lax_frames = [MRFrame(lax.images[p], lax.origin_mm, 0, p, float(lax.trigger_times_ms[p]))
                  for p in range(lax.images.shape[0])]
    add(classic_mr_series(lax_frames, info("cine_lax", 3, 2.0, n=lax.images.shape[0], orient=lax_orient,
                                           thickness=lax.thickness_mm, spacing=None, pixel_mm=lax.pixel_mm),
                          patient, study), [])
    # cine short axis
    cine_frames = sax_frames(cine.images, anatomy, cine.truth.trigger_times_ms, None, keep)
    rescanned: tuple[int, ...] = ()
    if variant in ("siemens", "rescanned_fov"):
        cine_gain = 4000.0 / float(np.max(cine.images))
        for k in keep:
            frames_k = [f for f in cine_frames if f.slice_index == k]
            pixel_k = st.pixel_mm
            if variant == "rescanned_fov" and k == mid:
                frames_k, pixel_k = _rescanned_cine(anatomy, k, rng, phases, cine.truth.trigger_times_ms)
                rescanned = (k,)
            add(classic_mr_series(frames_k, info("cine_sax", 10 + k, 5.0 + 0.3 * k, n=phases, pixel_mm=pixel_k,
                                                 description=series_description(vendor, "cine_sax", k + 1)),
                                  patient, study, gain=cine_gain), [k])
    else:
        add(write(cine_frames, info("cine_sax", 10, 5.0, n=phases), patient, study), keep)
    # TI scout (mid slice), then LGE
    scout_frames = [MRFrame(scout[i], anatomy.slice_origin_mm(scout_slice), scout_slice, i,
                            float(300.0 + 40.0 * i), float(ti)) for i, ti in enumerate(TI_SCOUT_MS[:scout.shape[0]])]
    add(classic_mr_series(scout_frames, info("ti_scout", 40, 14.0, n=len(scout_frames), spacing=None),
                          patient, study), [scout_slice])
    if variant == "decoys":
        rings = lge.truth.slice_ring
        picks = [int(np.flatnonzero(rings == r)[0]) for r in (1, 2, 3) if np.any(rings == r)]
        maps = t1_map(lge, rng, picks)
        map_frames = [MRFrame(maps[i], anatomy.slice_origin_mm(k), k, 0, 0.75 * cine.truth.rr_ms)
                      for i, k in enumerate(picks)]
        add(classic_mr_series(map_frames, info("map", 60, 22.0, spacing=None), patient, study, gain=1.0), picks)
    trigger = 0.75 * cine.truth.rr_ms
    mag_frames = sax_frames(lge.magnitude, anatomy, [trigger], lge.ti_ms, keep)
    psir_frames = sax_frames(lge.psir, anatomy, [trigger], lge.ti_ms, keep)
    tilted: tuple[int, ...] = ()
    if variant == "mixed_orientation":
        tilted = (mid,)
        mag_frames, psir_frames = _tilted_lge(anatomy, lge, mid, rng, mag_frames, psir_frames)
    add(write(mag_frames, info("lge_mag", 50, 16.0), patient, study), keep)
    add(write(psir_frames, info("lge_psir", 51, 16.0), patient, study), keep)

    truth = CMRStudyTruth(
        variant=variant, seed=seed, vendor=vendor, pattern=pattern_name, series_roles=roles, series_slices=slices,
        slice_position_mm=positions, missing_slices=missing,
        gains={w.info.series_uid: w.gain for w in written}, lge=lge.truth, cine=cine.truth,
        apex_mm=anatomy.frame.apex_mm.copy(), long_axis=anatomy.frame.long_axis.copy(),
        septal_angle_deg=anatomy.septal_angle_deg, ti_scout_slice=scout_slice, lge_inversion_time_ms=lge.ti_ms,
        tilted_slices=tilted, rescanned_slices=rescanned,
    )
    datasets = [ds for w in written for ds in w.datasets]
    return CMRStudy(datasets, anatomy, truth, written, lge, cine)


def _rescanned_cine(anatomy: CMRAnatomy, k: int, rng: np.random.Generator, phases: int,
                    trigger_times_ms: np.ndarray) -> tuple[list[MRFrame], float]:
    """Cine frames of slice ``k`` re-scanned with :data:`RESCAN_PIXEL_FACTOR` larger pixels (same matrix,
    same centre on the long axis); returns the frames and the pixel size."""
    st = anatomy.stack
    pixel = st.pixel_mm * RESCAN_PIXEL_FACTOR
    centre = (0.5 * (st.rows - 1), 0.5 * (st.cols - 1))
    axis = tuple(c + (a - c) / RESCAN_PIXEL_FACTOR for a, c in zip(st.axis_pixel, centre))
    one = replace(anatomy, stack=replace(st, n_slices=1, first_z_mm=float(st.z_centres_mm[k]), pixel_mm=pixel,
                                         axis_pixel=(float(axis[0]), float(axis[1]))))
    images = cine_phantom(one, rng, n_phases=phases).images
    return [MRFrame(images[p, 0], one.slice_origin_mm(0), k, p, float(trigger_times_ms[p])) for p in range(phases)], pixel


def _tilted_lge(anatomy: CMRAnatomy, lge: LGEImages, k: int, rng: np.random.Generator, mag: list[MRFrame],
                psir: list[MRFrame]) -> tuple[list[MRFrame], list[MRFrame]]:
    """Replace slice ``k`` of the LGE frames by a plane tilted by :data:`TILT_DEG` about the row
    direction through the same centre on the long axis (same noise level)."""
    x_axis, y_axis = anatomy.image_axes()
    t = math.radians(TILT_DEG)
    y_tilt = y_axis * math.cos(t) + anatomy.frame.long_axis * math.sin(t)
    centre = anatomy.frame.apex_mm + anatomy.frame.long_axis * float(anatomy.stack.z_centres_mm[k])
    plane = lge_plane(anatomy, lge.truth.pattern, lge.ti_ms, centre, x_axis, y_tilt, t_frac=lge.t_frac)
    sigma = lge.truth.sigma
    orientation = tuple(float(v) for v in np.concatenate([plane.x_axis, plane.y_axis]))
    images = {"mag": rician(plane.signal, sigma, rng), "psir": plane.signal + rng.normal(0.0, sigma, plane.signal.shape)}

    def swap(frames: list[MRFrame], image: np.ndarray) -> list[MRFrame]:
        return [replace(f, pixels=image, position_mm=plane.origin_mm, orientation=orientation) if f.slice_index == k
                else f for f in frames]

    return swap(mag, images["mag"]), swap(psir, images["psir"])


def save_cmr_study(study: CMRStudy, folder: Path) -> list[Path]:
    """Write ``study`` to ``folder`` (one ``.dcm`` file per instance, in ``series_NNN`` sub-folders)
    plus ``truth.json`` (:meth:`CMRStudyTruth.summary`); returns the DICOM file paths."""
    folder = Path(folder)
    paths = []
    for number, ds in enumerate(study.datasets):
        sub = folder / f"series_{int(ds.SeriesNumber):03d}"
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"{number:05d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    (folder / "truth.json").write_text(json.dumps(study.truth.summary(), indent=1))
    return paths


def write_cmr_study(folder: Path, variant: str = "standard", seed: int = 0, **options: Any) -> CMRStudyTruth:
    """Build (:func:`build_cmr_study`) and save (:func:`save_cmr_study`) a study; returns the truth."""
    built = build_cmr_study(variant, seed, **options)
    save_cmr_study(built, folder)
    return built.truth
