"""CardioNode: a DICOM processing node for cardiac imaging (research use only)."""

__version__ = "0.1.0"

RESEARCH_USE_NOTICE = (
    "Research use only. Not for diagnostic use. Not clinically validated; "
    "models trained on synthetic phantoms."
)
