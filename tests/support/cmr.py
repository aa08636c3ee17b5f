"""Small, fast synthetic cardiac MR studies and phantoms with exact truth, for every CMR test.

A thin user of :mod:`node.synth.cmr` (the one CMR phantom and writer):

* :func:`cmr_study`: a whole cine + LGE study (:func:`node.synth.cmr.study.build_cmr_study`,
  ``small=True``: 128 x 128 pixels of 2.5 mm, 12 cine phases) in a layout variant
  (``standard``, ``siemens``, ``philips``, ``enhanced``, ``reversed_instances``,
  ``missing_slice``), cached per process by (variant, seed, pattern) since a study takes a few
  seconds; treat the returned data sets as read-only (:func:`write_study` copies them to files);
* :func:`write_study`: the same study as Part 10 files under a folder (``series_NNN/*.dcm``
  and ``truth.json``), returning the truth;
* :func:`small_anatomy`, :func:`small_lge`, :func:`small_cine`: phantoms on a small grid
  (128 x 128 pixels of 1.5 mm) for tests of the phantom itself and of quantification.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset

from node.imaging.volume import ShortAxisStack
from node.synth.cmr.phantom import (
    CineImages,
    CMRAnatomy,
    LGEImages,
    Sampling,
    cine_phantom,
    draw_anatomy,
    draw_pattern,
    lge_phantom,
)
from node.synth.cmr.study import VARIANTS, CMRStudy, CMRStudyTruth, build_cmr_study, save_cmr_study

__all__ = ["VARIANTS", "cmr_study", "write_study", "small_anatomy", "small_lge", "small_cine", "decode_enhanced",
           "phantom_stack"]


_LGE_SAMPLING = Sampling()
_CINE_SAMPLING = Sampling(in_plane=2, through=4)


@lru_cache(maxsize=16)
def cmr_study(variant: str = "standard", seed: int = 0, pattern: str | None = None) -> CMRStudy:
    """A small cine + LGE study (cached: do not modify its data sets)."""
    return build_cmr_study(variant, seed, pattern=pattern, small=True)


def write_study(folder: Path, variant: str = "standard", seed: int = 0, pattern: str | None = None) -> CMRStudyTruth:
    """Write :func:`cmr_study` as ``folder/series_NNN/NNNNN.dcm`` plus ``truth.json``; returns the truth."""
    study = cmr_study(variant, seed, pattern)
    save_cmr_study(study, Path(folder))
    return study.truth


def small_anatomy(seed: int, *, gap_mm: float = 2.0, thickness_mm: float = 8.0, base_phase: float | None = None,
                  septal_angle_deg: float | None = None, pixel_mm: float = 1.5) -> CMRAnatomy:
    """A random heart on a 128 x 128 grid (FOV 192 mm at 1.5 mm pixels)."""
    return draw_anatomy(np.random.default_rng(seed), matrix=(128, 128), pixel_mm=pixel_mm, gap_mm=gap_mm,
                        thickness_mm=thickness_mm, base_phase=base_phase, septal_angle_deg=septal_angle_deg)


def small_lge(seed: int, pattern: str, *, snr_scar: float = 20.0, sampling: Sampling = _LGE_SAMPLING,
              anatomy: CMRAnatomy | None = None) -> LGEImages:
    """An LGE phantom of ``pattern`` (:data:`node.synth.cmr.phantom.PATTERNS`) on :func:`small_anatomy`."""
    rng = np.random.default_rng(10_000 + seed)
    an = small_anatomy(seed) if anatomy is None else anatomy
    return lge_phantom(an, draw_pattern(pattern, rng), rng, snr_scar=snr_scar, sampling=sampling)


def small_cine(seed: int, *, n_phases: int = 12, anatomy: CMRAnatomy | None = None,
               sampling: Sampling = _CINE_SAMPLING) -> CineImages:
    """A cine phantom on :func:`small_anatomy` (``n_phases`` over one R-R)."""
    an = small_anatomy(seed) if anatomy is None else anatomy
    return cine_phantom(an, np.random.default_rng(20_000 + seed), n_phases=n_phases, sampling=sampling)


def decode_enhanced(ds: Dataset) -> np.ndarray:
    """Frames ``[frame, row, col]`` of an Enhanced MR instance with each frame's own Pixel Value
    Transformation applied (the test's independent decoder, not the node's loader)."""
    stored = ds.pixel_array.astype(np.float64)
    if stored.ndim == 2:
        stored = stored[None]
    out = np.empty_like(stored)
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        transform = item.PixelValueTransformationSequence[0]
        out[i] = stored[i] * float(transform.RescaleSlope) + float(transform.RescaleIntercept)
    return out


def phantom_stack(images: np.ndarray, anatomy: CMRAnatomy, drop_slices: tuple[int, ...] = ()) -> ShortAxisStack:
    """A phantom's images (``[slice, row, col]`` or ``[phase, slice, row, col]``) as a
    :class:`~node.imaging.volume.ShortAxisStack` with the phantom's slice positions (axial-like
    orientation, normal apex -> base), without writing DICOM; ``drop_slices`` leaves slices out
    (a stack with a gap)."""
    vox = np.asarray(images, dtype=np.float64)
    if vox.ndim == 3:
        vox = vox[None]
    st = anatomy.stack
    keep = [k for k in range(st.n_slices) if k not in drop_slices]
    z = st.first_z_mm + st.spacing_mm * np.asarray(keep, dtype=float)
    positions = np.stack([np.zeros_like(z), np.zeros_like(z), z], axis=1)
    return ShortAxisStack(vox[:, keep], positions, np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]),
                          np.array([st.pixel_mm, st.pixel_mm]), float(st.thickness_mm), np.full((vox.shape[0], len(keep)), np.nan))
