"""A small pipeline for the queue, sender and end-to-end tests (registered from tests/, never shipped).

It accepts a study with an NM series, sums each NM instance's frames
(``analyse``, cpu), passes the sum through ``predict`` (gpu) unchanged and
``report``s a Secondary Capture image of the summed counts and a small
Comprehensive 3D SR quoting the total counts (cpu). Output UIDs are
deterministic: derived from the study, the pipeline version and the source SOP
Instance UIDs, so an identical re-run yields identical objects.

Test hook: when ``FLOWTEST_HOLD_DIR`` is set, ``analyse`` writes
``started-<pid>`` there and waits until a file ``release`` exists (at most
120 s), so a test can kill the worker process in the middle of a job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom import Dataset
from pydicom.dataset import FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from node import RESEARCH_USE_NOTICE
from node.pipelines import registry
from node.pipelines.base import Pipeline, SeriesRule
from node.results.content import ReportContext
from node.uids import deterministic_uid

NAME = "flowtest_nm"
VERSION = "1.0"
SC_CLASS = "1.2.840.10008.5.1.4.1.1.7"
SR_CLASS = "1.2.840.10008.5.1.4.1.1.88.34"
_PATIENT_STUDY = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
    "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName",
)


@dataclass(frozen=True)
class Analysis:
    header: Dataset  # patient/study attributes of the first source
    sources: tuple[tuple[str, str], ...]  # (SOP class, SOP instance) of every source, sorted
    total_counts: float
    image: np.ndarray  # [row, col] summed counts


class FlowTestPipeline(Pipeline):
    name = NAME
    version = VERSION
    title = "flow test: summed NM counts"
    series_rules = (SeriesRule("nm", modalities=frozenset({"NM"})),)
    result_type = Analysis

    def analyse(self, instances: Sequence[Dataset]) -> Analysis:
        hold = os.environ.get("FLOWTEST_HOLD_DIR")
        if hold:
            Path(hold, f"started-{os.getpid()}").write_text("")
            deadline = time.monotonic() + 120
            while not Path(hold, "release").exists() and time.monotonic() < deadline:
                time.sleep(0.1)
        nm = sorted((d for d in instances if d.Modality == "NM"), key=lambda d: str(d.SOPInstanceUID))
        if not nm:
            raise ValueError("no NM instance")
        image = np.zeros((int(nm[0].Rows), int(nm[0].Columns)), dtype=np.float64)
        for ds in nm:
            frames = ds.pixel_array.astype(np.float64)
            image += frames.sum(axis=0) if frames.ndim == 3 else frames
        header = Dataset()
        for keyword in _PATIENT_STUDY:
            if keyword in nm[0]:
                setattr(header, keyword, nm[0].data_element(keyword).value)
        sources = tuple(sorted((str(d.SOPClassUID), str(d.SOPInstanceUID)) for d in nm))
        return Analysis(header, sources, float(image.sum()), image)

    def report(self, result: Analysis, context: ReportContext) -> list[Dataset]:
        digest = [uid for _, uid in result.sources]
        study = str(result.header.StudyInstanceUID)
        uid = lambda *parts: deterministic_uid(NAME, VERSION, study, *digest, *parts)  # noqa: E731
        return [self._sc(result, context, uid), self._sr(result, context, uid)]

    def _base(self, result: Analysis, sop_class: str, sop_uid: str, series_uid: str, modality: str) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = sop_class
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.update(result.header)
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        ds.SeriesInstanceUID, ds.Modality, ds.SeriesNumber, ds.InstanceNumber = series_uid, modality, 900, 1
        ds.Manufacturer, ds.SeriesDescription = "CardioNode", f"{NAME} (research use only)"
        ds.ContentDate = ds.get("StudyDate", "20260101")
        ds.ContentTime = ds.get("StudyTime", "000000")
        return ds

    def _sc(self, result: Analysis, context: ReportContext, uid) -> Dataset:  # type: ignore[no-untyped-def]
        ds = self._base(result, SC_CLASS, uid("sc"), uid("sc-series"), "OT")
        ds.ConversionType = "WSD"
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.ImageComments = RESEARCH_USE_NOTICE
        scaled = result.image / max(result.image.max(), 1.0) * 255.0
        pixels = np.round(scaled).astype(np.uint8)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = pixels.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = pixels.tobytes()
        return ds

    def _sr(self, result: Analysis, context: ReportContext, uid) -> Dataset:  # type: ignore[no-untyped-def]
        ds = self._base(result, SR_CLASS, uid("sr"), uid("sr-series"), "SR")
        ds.ValueType = "CONTAINER"
        ds.ConceptNameCodeSequence = [_code("126000", "DCM", "Imaging Measurement Report")]
        ds.ContinuityOfContent = "SEPARATE"
        ds.CompletionFlag, ds.VerificationFlag = "COMPLETE", "UNVERIFIED"
        text = Dataset()
        text.RelationshipType, text.ValueType = "CONTAINS", "TEXT"
        text.ConceptNameCodeSequence = [_code("121106", "DCM", "Comment")]
        text.TextValue = f"total counts {result.total_counts:.0f}. {RESEARCH_USE_NOTICE}"
        ds.ContentSequence = [text]
        evidence = Dataset()
        evidence.StudyInstanceUID = str(result.header.StudyInstanceUID)
        ds.CurrentRequestedProcedureEvidenceSequence = [evidence]
        if context.predecessors:
            items = []
            for study_uid, series_uid, sop_class, sop_uid in context.predecessors:
                ref = Dataset()
                ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = sop_class, sop_uid
                series = Dataset()
                series.SeriesInstanceUID, series.ReferencedSOPSequence = series_uid, [ref]
                item = Dataset()
                item.StudyInstanceUID, item.ReferencedSeriesSequence = study_uid, [series]
                items.append(item)
            ds.PredecessorDocumentsSequence = DicomSequence(items)
        return ds


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = value, scheme, meaning
    return code


registry.register(FlowTestPipeline())
