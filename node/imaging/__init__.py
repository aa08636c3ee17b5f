"""DICOM to volumes with patient geometry and a frames axis (gates or timed dynamic frames).

* :mod:`node.imaging.volume`: :class:`~node.imaging.volume.Volume`,
  :class:`~node.imaging.volume.FrameAxis` and :class:`~node.imaging.volume.ShortAxisStack` (numpy only: the plain types :mod:`node.quant` uses);
* :mod:`node.imaging.nm`: reconstructed NM (SPECT) multi-frame images to volumes;
* :mod:`node.imaging.pet`: dynamic PET (PET Image Storage, one instance per slice per frame, and
  Enhanced PET) to timed 4-D volumes;
* :mod:`node.imaging.mr`: cardiac MR (MR Image Storage, Enhanced MR): series roles (LGE magnitude
  and PSIR, TI scout, cine short and long axis, maps, other) with their reasons, and short-axis
  stacks built across series (:class:`~node.imaging.volume.ShortAxisStack`);
* :mod:`node.imaging.states`: the acquisition state (stress or rest) of a series, the one
  rule routing and loading share;
* :mod:`node.imaging.radiopharmaceuticals`: tracer codes and names (plain tables);
* :mod:`node.imaging.dicom_tracer`: the tracer of an NM or PET instance, the one rule routing
  and loading share;
* :mod:`node.imaging.errors`: :class:`~node.imaging.errors.UnusableSeriesError`.
"""

#: the package's modules (this face imports none of them, so that :mod:`node.quant`, which
#: imports the plain volume types, does not load pydicom)
__all__ = [
    "dicom_tracer",
    "errors",
    "mr",
    "nm",
    "pet",
    "radiopharmaceuticals",
    "states",
    "volume",
]
