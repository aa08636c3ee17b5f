"""Every real MR file of the shared corpus is loaded or refused with a reason that names the attribute.

None of them is cardiac (MANIFEST.md says so): the loaded ones must read with their geometry and
rescaled pixels and get the role ``other``; the malformed ones must be refused cleanly, one by
one, without stopping the study they arrive in.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest

from node.imaging.errors import UnusableSeriesError
from node.imaging.mr import load_cmr_study, load_mr_series, mr_frames, mr_series_role
from node.pipelines.routing import routing_attributes

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "real"

#: the MR files (MANIFEST rows mr/* and malformed/*MR*): frames expected, or the attribute a refusal names
LOADED = {
    "mr/dcm4che_MR-JPEGLosslessSV1.dcm": 1,
    "mr/dcm_qa_enh_Siemens_XA10_6_1.dcm": 6,
    "mr/fodicom_mr_brucker_EnhancedMR.dcm": 4,
    "mr/pydicom-data_MR-SIEMENS-DICOM-WithOverlays.dcm": 1,
    "mr/tcia_PROSTATE-MRI_Philips_DWI.dcm": 1,
}
REFUSED = {
    "malformed/fodicom_GH340_ACR-NEMA2_MR.dcm": "SOPClassUID",  # ACR-NEMA 2.0, no meta, no SOP class
    "malformed/orthanc_Issue22-NoPixelData_EnhancedMR.dcm": "PixelData",  # Enhanced MR header, pixels removed
    "malformed/pydicom_MR_truncated.dcm": "PixelData",  # 8130 of 8192 bytes
    "malformed/pydicom-data_emri_small_jpeg_2k_lossless_too_short.dcm": "SOPClassUID",  # reads as an empty data set
}

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason="the shared corpus is not on this machine")


def _read(name: str) -> pydicom.Dataset:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "End of file reached before delimiter" of the short J2K file
        return pydicom.dcmread(CORPUS / name, force=True)


def test_the_list_covers_every_mr_file_of_the_corpus() -> None:
    present = {f"mr/{p.name}" for p in (CORPUS / "mr").iterdir()}
    present |= {f"malformed/{p.name}" for p in (CORPUS / "malformed").iterdir() if "MR" in p.name or "emri" in p.name}
    assert present == set(LOADED) | set(REFUSED)


@pytest.mark.parametrize("name", sorted(LOADED))
def test_real_mr_files_load_with_geometry_and_rescaled_pixels(name: str) -> None:
    ds = _read(name)
    series = load_mr_series(ds)
    assert len(series.frames) == LOADED[name]
    assert series.pixels.shape == (LOADED[name], int(ds.Rows), int(ds.Columns))
    assert np.all(np.isfinite(series.pixels)) and series.pixels.max() > 0
    for frame in series.frames:
        assert abs(float(np.linalg.norm(frame.normal)) - 1.0) < 1e-6
        assert min(frame.pixel_spacing) > 0
    slope = float(ds.get("RescaleSlope", 1.0))
    if ds.get("NumberOfFrames") is None:  # classic: the stored values times the slope (Philips writes one)
        assert np.allclose(series.pixels[0], ds.pixel_array * slope + float(ds.get("RescaleIntercept", 0.0)))
    assert series.decision.role == "other"  # brain, prostate, preclinical: not cardiac
    assert any("no cardiac gating" in r for r in series.decision.reasons)
    assert mr_series_role(ds) == "other"


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_malformed_mr_files_are_refused_with_the_attribute_named(name: str) -> None:
    ds = _read(name)
    with pytest.raises(UnusableSeriesError) as refused:
        load_mr_series(ds)
    assert refused.value.attribute == REFUSED[name]
    assert f"{REFUSED[name]} (" in refused.value.reason  # the keyword with its tag
    routing_attributes(ds)  # routing reads it without raising


def test_a_study_of_all_of_them_refuses_the_malformed_ones_one_by_one() -> None:
    datasets = [_read(name) for name in sorted(LOADED) + sorted(REFUSED)]
    study = load_cmr_study(datasets)
    assert sorted(r.attribute or "" for r in study.refusals) == sorted(REFUSED.values())
    assert len(study.decisions) == len(LOADED)
    assert {d.role for d in study.decisions.values()} == {"other"}
    assert study.stacks == {} and study.lv_axis is None


def test_enhanced_mr_per_frame_rescale_of_the_philips_header_is_read() -> None:
    """The Philips Enhanced MR header (pixels removed) carries a per-frame Rescale Slope of 2.488: it is read
    per frame even though the instance is refused for its missing Pixel Data."""
    ds = _read("malformed/orthanc_Issue22-NoPixelData_EnhancedMR.dcm")
    ds.PixelData = b"\0\0" * int(ds.Rows) * int(ds.Columns) * int(ds.NumberOfFrames)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    frames, refusals = mr_frames([ds])
    assert refusals == []
    assert len(frames) == 24
    assert abs(frames[0].slope - 2.48815628815628) < 1e-9
