"""Training of the node's MONAI bundles, apart from inference (``cardionode train``).

Modules: :mod:`node.ai.training.run` (``train_bundle``, ``train_main``: the command),
:mod:`node.ai.training.polar` (the polar-map bundles ``cad_polar``, ``tracer_heads``,
``crt_response`` on synthetic cohorts or site folders, their evaluation, metadata and
README), :mod:`node.ai.training.segmentation` (``lv_segmentation`` on phantoms),
:mod:`node.ai.training.cmr_segmentation` (``cmr_segmentation``, the CMR short-axis U-Net, on CMR phantoms) and
:mod:`node.ai.training.common` (seeding, progress, :class:`TrainResult`). Training may
use :mod:`node.synth`; inference modules never do.
"""

from node.ai.training.common import TrainResult
from node.ai.training.run import train_bundle, train_main

__all__ = ["TrainResult", "train_bundle", "train_main"]
