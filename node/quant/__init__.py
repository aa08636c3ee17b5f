"""Cardiac quantification, numpy/scipy only; imports nothing of the node but :mod:`node.imaging.volume`.

Modules, in the direction of the data flow:

* :mod:`node.quant.lv_frame`: the LV frame and :class:`~node.quant.lv_frame.LVLocation`
  (where the LV is), and the map from LV coordinates to voxel indices;
* :mod:`node.quant.orientation`: the count-threshold LV locator (``locate_lv``) and
  reorientation to short axis;
* :mod:`node.quant.segments`: the canonical polar grid, AHA 17 segments, territories;
* :mod:`node.quant.polar_map`: mid-wall surface and polar-map sampling of 3-D volumes
  and of every frame of a 4-D one (gates or timed dynamic frames);
* :mod:`node.quant.function`: gated volumes, LVEF, wall motion, thickening, TID;
* :mod:`node.quant.phase`: first-harmonic phase analysis of gated polar maps;
* :mod:`node.quant.normal_limits` (SYNTHETIC normal limits: type, rule, data files) and
  :mod:`node.quant.scores` (perfusion scores, TPD), SPECT-specific;
* cardiac MR short-axis stacks: :mod:`node.quant.sax_segments` (AHA 17 segments from LV/RV
  masks, mid-septum reference), :mod:`node.quant.lge` (LGE burden, segments, pattern) and
  :mod:`node.quant.cmr_function` (volumes, EF, mass, thickening by Simpson summation).

The offline builder of the normal-limit files is :mod:`node.synth.spect.normal_db`.
"""

#: the package's modules (this face imports none of them: import the one you need)
__all__ = [
    "cmr_function",
    "function",
    "kinetics",
    "lge",
    "lv_frame",
    "normal_limits",
    "orientation",
    "phase",
    "polar_map",
    "sax_segments",
    "scores",
    "segments",
]
