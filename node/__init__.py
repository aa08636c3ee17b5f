"""CardioNode: a DICOM processing node for cardiac imaging (research use only).

The packages follow the data flow (DESIGN section 3): :mod:`node.dicom` (listener, spool,
sender), :mod:`node.ledger`, :mod:`node.workflow`, :mod:`node.queue`, :mod:`node.pipelines`,
:mod:`node.imaging`, :mod:`node.quant`, :mod:`node.ai`, :mod:`node.results`, and beside them
:mod:`node.synth` (phantoms), :mod:`node.ops` (the operator's view), :mod:`node.config`,
:mod:`node.uids`, :mod:`node.resources`, :mod:`node.service` and :mod:`node.cli`.
"""

__all__ = ["RESEARCH_USE_NOTICE", "__version__"]

__version__ = "0.1.0"

RESEARCH_USE_NOTICE = (
    "Research use only. Not for diagnostic use. Not clinically validated; "
    "models trained on synthetic phantoms."
)
