"""Digital SPECT phantoms with exact ground truth and synthetic NM DICOM studies (research use only).

Modules: :mod:`node.synth.phantom` (phantom API), :mod:`node.synth.geometry`,
:mod:`node.synth.anatomy`, :mod:`node.synth.truth`, :mod:`node.synth.nm_dicom`,
:mod:`node.synth.study` (files + truth JSON), :mod:`node.synth.demo`
(``cardionode demo``), :mod:`node.synth.cohort` (polar-map cohorts for the models).
"""
