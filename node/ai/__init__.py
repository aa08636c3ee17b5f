"""Deep-learning models of CardioNode: MONAI bundles, inference, explanations, training.

One module per modality's models (:mod:`node.ai.spect` adapts the SPECT pipeline's
result), shared pieces beside them (:mod:`node.ai.bundles`, :mod:`node.ai.networks`,
:mod:`node.ai.inference`, :mod:`node.ai.explain`, :mod:`node.ai.segmentation`), and
training apart from inference (:mod:`node.ai.training`, ``cardionode train``).
torch and MONAI are imported only when a model is loaded or trained.

Every model is research use only, trained on synthetic phantoms and not
clinically validated; every output built from it says so.
"""

from node.ai.spect import AI_NOTICE, inputs_from_result, predict_spect, predict_spect_batch

__all__ = ["AI_NOTICE", "inputs_from_result", "predict_spect", "predict_spect_batch"]
