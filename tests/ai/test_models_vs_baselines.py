"""Shipped weights on fresh held-out synthetic cohorts: models against the seed papers' baselines.

Cohorts are drawn with a fresh seed (printed on failure) from the documented
generator (node/synth/spect/cohort.py); the shipped weights never saw them. The
documented AUC ranges are in docs/validation.md ("Models").
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import expit

from node.ai import bundles
from node.ai.features import cad_inputs, crt_inputs, crt_tabular, tracer_inputs
from node.ai.metrics import LogisticRegression, auc
from node.ai.training.polar import guideline_criteria
from node.synth.spect import cohort as cohorts

CAD_AUC_RANGE = (0.78, 0.93)
CRT_AUC_RANGE = (0.70, 0.92)


def _logits(net: torch.nn.Module, *inputs: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return net(*[torch.from_numpy(np.ascontiguousarray(a)) for a in inputs]).numpy()


def test_cad_model_beats_stress_tpd_on_the_same_cases(seed: int) -> None:
    c = cohorts.make_cad_cohort(500, "test", seed)
    limits = cohorts.normal_limits(seed, n_per_group=50)
    deficit, severity, tpd = cohorts.quantitative_maps(c.maps["stress_perfusion"], c.tracer, c.features["sex_male"], limits)
    b = bundles.load_bundle("cad_polar", device="cpu")
    x, tab = cad_inputs(c.maps["stress_perfusion"], c.maps["stress_motion"], c.maps["stress_thickening"], c.features,
                        deficit, severity)
    p = expit(_logits(b.network, x, tab))[:, 0]
    model_auc, tpd_auc = auc(c.labels["cad"], p), auc(c.labels["cad"], tpd)
    msg = f"seed {seed}: model AUC {model_auc:.3f}, stress TPD AUC {tpd_auc:.3f}"
    print(msg)
    assert model_auc > tpd_auc, msg
    assert CAD_AUC_RANGE[0] <= model_auc <= CAD_AUC_RANGE[1], msg


def test_tracer_heads_discriminate_their_own_labels(seed: int) -> None:
    c = cohorts.make_cad_cohort(400, "test", seed)
    limits = cohorts.normal_limits(seed, n_per_group=40)
    stress_deficit = cohorts.quantitative_maps(c.maps["stress_perfusion"], c.tracer, c.features["sex_male"], limits)[0]
    rest_deficit = cohorts.quantitative_maps(c.maps["rest_perfusion"], c.tracer, c.features["sex_male"], limits)[0]
    b = bundles.load_bundle("tracer_heads", device="cpu")
    p = expit(_logits(b.network, tracer_inputs(c.maps["stress_perfusion"], c.maps["rest_perfusion"], len(c),
                                                  stress_deficit, rest_deficit)))
    tc, tl = c.tracer == "tc99m", c.tracer == "tl201"
    tc_auc = auc(c.labels["tc_abnormal"][tc], p[tc, 0])
    tl_auc = auc(c.labels["tl_risk"][tl], p[tl, 1])
    msg = f"seed {seed}: Tc head AUC {tc_auc:.3f}, Tl head AUC {tl_auc:.3f}"
    print(msg)
    assert tc_auc > 0.75 and tl_auc > 0.70, msg
    # stress-only and rest-only variants run through the same weights; rest-only sees only scar and is weaker
    p_rest = expit(_logits(b.network, tracer_inputs(None, c.maps["rest_perfusion"], len(c), None, rest_deficit)))
    assert auc(c.labels["tc_abnormal"][tc], p_rest[tc, 0]) < tc_auc + 0.02, msg


def test_crt_model_beats_logistic_regression_and_guideline_criteria(seed: int) -> None:
    train = cohorts.make_crt_cohort(1200, "train", seed)
    test = cohorts.make_crt_cohort(500, "test", seed)
    b = bundles.load_bundle("crt_response", device="cpu")
    imputation = b.metadata["imputation"]
    tab_train = crt_tabular(train.features, imputation).values
    tab_test = crt_tabular(test.features, imputation).values
    logreg = LogisticRegression().fit(tab_train, train.labels["crt_response"])
    x = crt_inputs(test.maps["rest_perfusion"], test.maps["rest_phase"], test.maps["rest_thickening"])
    p = expit(_logits(b.network, x, tab_test))[:, 0]
    y = test.labels["crt_response"]
    model_auc = auc(y, p)
    lr_auc = auc(y, logreg.predict_proba(tab_test))
    guide = guideline_criteria(test.features)
    guide_auc = auc(y, guide)
    model_acc = float(np.mean((p >= 0.5) == (y == 1)))
    guide_acc = float(np.mean((guide == 1) == (y == 1)))
    msg = (f"seed {seed}: CRT model AUC {model_auc:.3f} acc {model_acc:.3f}; logistic AUC {lr_auc:.3f}; "
           f"guideline AUC {guide_auc:.3f} acc {guide_acc:.3f}")
    print(msg)
    assert model_auc > lr_auc, msg
    assert model_auc > guide_auc and model_acc > guide_acc, msg
    assert CRT_AUC_RANGE[0] <= model_auc <= CRT_AUC_RANGE[1], msg
