"""Masks on the source images: the DICOM Segmentation and the contour-overlay images.

Cardiac MR reports two masks on the LGE short-axis stack: the LV myocardium and the
enhanced (LGE) myocardium (reference ``cmr_lge.md`` 7.2). Both are written

* as one **DICOM Segmentation** (highdicom, BINARY, one segment per mask, on the LGE
  images' frame of reference; segment codes and series attributes from
  ``dicom_templates/series.toml`` ``[seg]``): :func:`build_segmentation`. Single-frame
  sources (classic MR) give one source image per slice; an Enhanced MR source gives its
  frames. Empty frames are left out (highdicom's default), so a reader gets each mask back
  exactly with ``get_pixels_by_source_instance`` / ``get_pixels_by_source_frame``;
* as **Secondary Capture overlays**, one per slice with myocardium: the LGE image in grey
  with the myocardial borders in green and the LGE borders in red
  (:func:`render_mask_overlay`; the SC itself is the shared
  :func:`node.results.sc.build_rendered_sc` of kind ``sc_overlay``).

Masks are bool ``[slice, row, column]`` in the order of the source slices given.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import highdicom as hd
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from pydicom import Dataset
from pydicom.sr.codedict import codes
from scipy import ndimage

import node
from node.results.content import Algorithm
from node.results.identity import ContentIdentity
from node.results.render import RESEARCH_LABEL, figure_to_rgb
from node.results.templates import Code, TemplateError, Templates

__all__ = [
    "SEGMENTATION_STORAGE",
    "SEG_KIND",
    "OVERLAY_KIND",
    "build_segmentation",
    "render_mask_overlay",
]

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
#: ``series.toml`` kinds of the Segmentation and of the overlay SCs
SEG_KIND = "seg"
OVERLAY_KIND = "sc_overlay"

_OVERLAY_SIZE = 512
_DPI = 100


def _segment_descriptions(templates: Templates, keys: Sequence[str],
                          algorithm: Algorithm) -> list[hd.seg.SegmentDescription]:
    entries = {str(e.get("key")): e for e in templates.series(SEG_KIND).get("segments", [])}
    identification = hd.AlgorithmIdentificationSequence(
        name=algorithm.name[:64], family=codes.cid7162.ArtificialIntelligence, version=algorithm.version[:64],
        parameters={p.split("=", 1)[0][:64]: p.split("=", 1)[-1][:64] for p in algorithm.parameters[:20]} or None,
    )
    out = []
    for number, key in enumerate(keys, start=1):
        entry = entries.get(key)
        if entry is None:
            raise TemplateError(f"series.toml [seg] has no segment {key!r} (known: {', '.join(sorted(entries))})")
        try:
            category, kind = (Code(str(entry[k]["value"]), str(entry[k]["scheme"]), str(entry[k]["meaning"]))
                              for k in ("category", "type"))
        except (KeyError, TypeError) as exc:
            raise TemplateError(f"series.toml [seg] segment {key!r}: category and type need value, scheme, meaning") from exc
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=str(entry.get("label", key))[:64],
            segmented_property_category=category.concept(),
            segmented_property_type=kind.concept(),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=identification,
        ))
    return out


def _frames_by_source(sources: Sequence[Dataset], frame_numbers: Sequence[int] | None,
                      masks: np.ndarray) -> tuple[list[Dataset], np.ndarray]:
    """The source images highdicom gets and the mask array over their frames ``[frame, row, column, segment]``.

    Single-frame sources: one per slice, in slice order. One multi-frame source: every frame of it,
    the slices' masks at their frame numbers (1-based ``frame_numbers``), zeros elsewhere.
    """
    uids = [str(ds.SOPInstanceUID) for ds in sources]
    if len(set(uids)) == len(uids):
        return list(sources), masks
    if len(set(uids)) != 1 or frame_numbers is None:
        raise ValueError("slices must come from distinct single-frame images or from the frames of one multi-frame image")
    source = sources[0]
    n_frames = int(source.get("NumberOfFrames", 1))
    out = np.zeros((n_frames, *masks.shape[1:]), dtype=masks.dtype)
    for s, number in enumerate(frame_numbers):
        out[int(number) - 1] = masks[s]
    return [source], out


def build_segmentation(
    masks: Mapping[str, np.ndarray],
    sources: Sequence[Dataset],
    identity: ContentIdentity,
    templates: Templates,
    algorithm: Algorithm,
    *,
    frame_numbers: Sequence[int] | None = None,
    instance_number: int = 1,
) -> Dataset:
    """A BINARY DICOM Segmentation of ``masks`` on ``sources``.

    Parameters
    ----------
    masks : mapping of segment key -> bool array [slice, row, column]
        Keys of ``series.toml`` ``[seg]`` segments (``lv_myocardium``, ``lge``), in segment-number order.
    sources : datasets, one per slice
        The images the masks lie on, in slice order: full headers (pixel data not needed), each
        slice its own single-frame image, or every slice the same multi-frame image with
        ``frame_numbers`` (1-based) saying which frame is which slice.
    identity, templates, algorithm
        The run's output identity (UIDs, dates), templates and the algorithm that made the masks.
    """
    keys = list(masks)
    if not keys:
        raise ValueError("build_segmentation needs at least one mask")
    stacked = np.stack([np.asarray(masks[k], dtype=bool) for k in keys], axis=-1)
    if stacked.ndim != 4 or stacked.shape[0] != len(sources):
        raise ValueError(f"masks must be [slice, row, column] with one slice per source ({len(sources)}), "
                         f"got {stacked.shape[:-1]}")
    source_images, pixels = _frames_by_source(sources, frame_numbers, stacked)
    series = templates.series(SEG_KIND)
    ref = source_images[0]
    seg = hd.seg.Segmentation(
        source_images=source_images,
        pixel_array=pixels.astype(np.uint8),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segment_descriptions(templates, keys, algorithm),
        series_instance_uid=identity.uid(SEG_KIND, "series"),
        series_number=int(series["series_number"]),
        sop_instance_uid=identity.uid(SEG_KIND, "instance", *keys),
        instance_number=instance_number,
        manufacturer=templates.manufacturer,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=f"{algorithm.version}; CardioNode {node.__version__}"[:64],
        device_serial_number=identity.uid(SEG_KIND, "device")[-16:],
        content_description=str(series["description"])[:64],
        content_creator_name="CardioNode^",
        series_description=str(series["description"])[:64],
        content_label="LGE_SEG",
    )
    _stamp(seg, identity)
    if "AccessionNumber" in ref and "AccessionNumber" not in seg:
        seg.AccessionNumber = ref.AccessionNumber
    return seg


def _stamp(ds: Dataset, identity: ContentIdentity) -> None:
    """Dates and times from the sources (never the wall clock): identical re-runs give identical bytes."""
    for prefix in ("Content", "Series", "InstanceCreation"):
        setattr(ds, f"{prefix}Date", identity.content_date)
        setattr(ds, f"{prefix}Time", identity.content_time)


def _outline(mask: np.ndarray) -> np.ndarray:
    """Border pixels of a bool mask (inside pixels with an outside 4-neighbour)."""
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def render_mask_overlay(
    image: np.ndarray,
    myocardium: np.ndarray,
    lge: np.ndarray,
    title: str,
    *,
    blood: np.ndarray | None = None,
    size: int = _OVERLAY_SIZE,
) -> np.ndarray:
    """One slice's contour overlay: RGB ``uint8`` ``[size, size, 3]``.

    ``image`` ``[row, column]`` (any linear unit) is shown in grey (window: 1st to 99.5th
    percentile), cropped to the myocardium's bounding box with a margin; myocardial borders in
    green, the LGE region's border in red with a light red fill, the blood-pool border (when
    given) in yellow. Title and the research-use label are burned in.
    """
    img = np.asarray(image, dtype=np.float64)
    myo = np.asarray(myocardium, dtype=bool)
    scar = np.asarray(lge, dtype=bool) & myo
    rows, cols = np.nonzero(myo) if myo.any() else (np.array([0, img.shape[0] - 1]), np.array([0, img.shape[1] - 1]))
    centre = ((rows.min() + rows.max()) / 2.0, (cols.min() + cols.max()) / 2.0)
    half = max(rows.max() - rows.min(), cols.max() - cols.min()) / 2.0 * 1.6 + 6
    r0, r1 = int(max(0, np.floor(centre[0] - half))), int(min(img.shape[0], np.ceil(centre[0] + half) + 1))
    c0, c1 = int(max(0, np.floor(centre[1] - half))), int(min(img.shape[1], np.ceil(centre[1] + half) + 1))
    crop = img[r0:r1, c0:c1]
    lo, hi = np.percentile(crop, [1.0, 99.5]) if crop.size else (0.0, 1.0)
    grey = np.clip((crop - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    zoom = max(1, int((size * 0.82) // max(crop.shape)))
    rgb = np.repeat(np.kron(grey, np.ones((zoom, zoom)))[..., None], 3, axis=2)

    def up(mask: np.ndarray) -> np.ndarray:
        return np.kron(mask[r0:r1, c0:c1].astype(np.uint8), np.ones((zoom, zoom), dtype=np.uint8)).astype(bool)

    scar_up = up(scar)
    rgb[scar_up] = 0.65 * rgb[scar_up] + 0.35 * np.array([1.0, 0.0, 0.0])
    layers = [(up(myo), (0.1, 0.9, 0.1))]
    if blood is not None:
        layers.append((up(np.asarray(blood, dtype=bool)), (1.0, 0.9, 0.1)))
    layers.append((scar_up, (1.0, 0.1, 0.1)))
    for mask, colour in layers:
        edge = ndimage.binary_dilation(_outline(mask), iterations=max(0, zoom // 4))
        rgb[edge] = colour
    fig = Figure(figsize=(size / _DPI, size / _DPI), dpi=_DPI, facecolor="black")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.0, 0.07, 1.0, 0.86))
    ax.imshow(rgb, interpolation="nearest")
    ax.set_axis_off()
    fig.text(0.5, 0.965, title, color="white", ha="center", va="center", fontsize=11)
    fig.text(0.02, 0.035, "green: LV myocardium  yellow: LV blood pool  red: LGE", color="white", ha="left", va="center", fontsize=9)
    fig.text(0.98, 0.035, RESEARCH_LABEL, color="#ffcc00", ha="right", va="center", fontsize=8)
    return figure_to_rgb(fig)
