"""Digital SPECT phantoms with exact ground truth and synthetic NM DICOM studies (research use only).

Modules: :mod:`node.synth.spect.phantom` (phantom API), :mod:`node.synth.geometry`,
:mod:`node.synth.anatomy`, :mod:`node.synth.truth`, :mod:`node.synth.spect.nm_dicom`,
:mod:`node.synth.spect.study` (files + truth JSON), :mod:`node.synth.spect.demo`
(``cardionode demo``), :mod:`node.synth.spect.cohort` (polar-map cohorts for the models).
"""
