"""Kinetic models of PET MBF (node.quant.kinetics) against exact truth and an independent implementation.

Acceptance (issue 15; reference note pet_mbf.md 8.3):

* Lortie K1(F) anchors to 1e-3; UCLA k2/k3/extraction at F = 1 as in the note.
* Model curves against a closed form written here from scratch (sum-of-exponentials input,
  analytic convolution and analytic decay-weighted frame integrals; an ODE solver for the
  DeGrado metabolite term): <= 0.1 % (the note asks <= 1 %).
* Noise-free recovery of F in {0.3, 0.5, 1, 2, 3, 4, 5} mL/min/g for every model: <= 0.1 % with
  the exact input; with only the frame means of the input, <= 1 % for Rb-82 on its clinical
  schedules. For N-13 (10 s first frames) and O-15 (5 s) the frame-averaged bolus limits
  recovery at high F (measured in bench/validate_pet_tac.py part A: up to ~1.5 % NH3, ~3.5 %
  water at F = 5); with 5 s (NH3) and 2 s (water) first frames the 1 % holds, which is tested.
* Rb-82 at clinical noise (5 % on the last frame), fresh seeds: segment MBF mean bias within
  +-3 %, 95 % of replicates within +-20 % (rest) / +-14 % (stress); segment MFR mean bias within
  +-3 %, 95 % within +-25 %. In the test: 20 rest/stress studies = 340 segment replicates per
  condition (the full 300-study sweep is bench/validate_pet_tac.py part B).
* Basis-function voxel method against the per-segment fit on noise-free TACs: <= 0.2 % with
  the exact input (same model, every model), <= 0.5 % for Rb-82 from frame means (the voxel
  map uses one weight vector for all voxels, the segment fit per-TAC weights).
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy import integrate, optimize

from node.imaging.volume import FrameSchedule
from node.quant import kinetics as K
from node.quant.segments import TERRITORY_SEGMENTS
from node.synth.pet import tac

FLOWS = np.array([0.3, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0])


# ------------------------------------------------------------------------------------------
# independent closed form: input = sum of exponentials c_i exp(-mu_i (t - t_d)) for t > t_d
# ------------------------------------------------------------------------------------------

def _phi(z: np.ndarray) -> np.ndarray:
    """(1 - exp(-z)) / z, 1 at z = 0 (stable for any sign)."""
    z = np.asarray(z, dtype=float)
    small = np.abs(z) < 1e-8
    safe = np.where(small, 1.0, z)
    return np.where(small, 1.0 - z / 2, -np.expm1(-safe) / safe)


class ExpSum:
    """f(t) = sum_i c_i exp(-mu_i (t - t0)) for t > t0, else 0."""

    def __init__(self, terms: list[tuple[float, float]], t0: float) -> None:
        self.terms = [(float(c), float(mu)) for c, mu in terms]
        self.t0 = float(t0)

    def __call__(self, t: np.ndarray) -> np.ndarray:
        x = np.asarray(t, dtype=float) - self.t0
        out = sum(c * np.exp(-mu * np.clip(x, 0, None)) for c, mu in self.terms)
        return np.where(x > 0, out, 0.0)

    def scaled(self, s: float) -> ExpSum:
        return ExpSum([(s * c, mu) for c, mu in self.terms], self.t0)

    def plus(self, other: ExpSum) -> ExpSum:
        assert other.t0 == self.t0
        return ExpSum(self.terms + other.terms, self.t0)

    def convolve_exp(self, k: float) -> ExpSum:
        """int_0^x f(s) exp(-k (x - s)) ds = sum c (e^{-mu x} - e^{-k x}) / (k - mu), as an ExpSum.

        A term with k == mu is x e^{-k x}; it never occurs below (asserted).
        """
        terms = []
        for c, mu in self.terms:
            assert abs(k - mu) > 1e-9
            terms += [(c / (k - mu), mu), (-c / (k - mu), k)]
        return ExpSum(terms, self.t0)

    def frame_values(self, start: np.ndarray, end: np.ndarray, lam: float, corrected: bool) -> np.ndarray:
        """Decay-weighted frame means (corrected) or plain frame means of f(t) e^{-lam t} (uncorrected)."""
        out = np.zeros(start.size)
        for i, (a, b) in enumerate(zip(start, end)):
            lo = max(a, self.t0)
            if b > lo:
                total = 0.0
                for c, mu in self.terms:
                    rho = mu + lam  # integrand c e^{mu t0} e^{-rho t}
                    total += c * math.exp(-mu * (lo - self.t0) - lam * lo) * (b - lo) * float(_phi(rho * (b - lo)))
                out[i] = total
            norm = math.exp(-lam * a) * (b - a) * float(_phi(lam * (b - a)))
            out[i] = out[i] / norm if corrected else out[i] / (b - a)
        return out


# bolus (difference of exponentials) + plateau rising over 20 s and washing out over 3000 s
BOLUS = ExpSum([(1.0e5, 1 / 8.0), (-1.0e5, 1 / 3.0), (1.5e4, 1 / 3000.0), (-1.5e4, 1 / 20.0)], t0=12.0)
RV_BOLUS = ExpSum([(1.3e5, 1 / 6.0), (-1.3e5, 1 / 2.5), (1.5e4, 1 / 3000.0), (-1.5e4, 1 / 20.0)], t0=8.0)


def _sampled(f: ExpSum, end_s: float, dt: float = 0.02) -> K.SampledInput:
    t = np.arange(0.0, end_s + 2 * dt, dt)
    return K.SampledInput(t, f(t))


def _closed_form(model: K.KineticModel, params: dict[str, float], schedule: FrameSchedule, corrected: bool) -> np.ndarray:
    lam = math.log(2) / model.half_life_s
    s, e = schedule.start_s, schedule.end_s
    blood = BOLUS.frame_values(s, e, lam, corrected)
    rv = RV_BOLUS.frame_values(s, e, lam, corrected)
    fb = params["blood_fraction"]
    fr = params.get("rv_fraction", 0.0)
    if isinstance(model, K.Rb82Lortie):
        f = params["mbf_ml_per_min_per_g"]
        k1 = f * (1 - 0.77 * math.exp(-0.63 / f)) / 60.0  # written out, not model.k1
        tissue = BOLUS.convolve_exp(params["k2_per_min"] / 60.0).scaled(k1)
        return (1 - fb - fr) * tissue.frame_values(s, e, lam, corrected) + fb * blood + fr * rv
    if isinstance(model, K.NH3UCLA):
        f = params["mbf_ml_per_min_per_g"]
        k2 = f / 0.8
        k3 = k2 * (1.65 * math.exp(1.25 / f) - 1)
        # irreversible two-tissue impulse response K1 [k3/(k2+k3) + k2/(k2+k3) e^{-(k2+k3) t}]
        trapped = BOLUS.convolve_exp(0.0).scaled(f / 60.0 * k3 / (k2 + k3))  # k = 0: running integral
        free = BOLUS.convolve_exp((k2 + k3) / 60.0).scaled(f / 60.0 * k2 / (k2 + k3))
        tissue = trapped.plus(free)
        return (1 - fb - fr) * tissue.frame_values(s, e, lam, corrected) + fb * blood + fr * rv
    if isinstance(model, K.H2OIida):
        f, ptf, p = params["ptmbf_ml_per_min_per_ml"], params["perfusable_tissue_fraction"], 0.9464
        tissue = BOLUS.convolve_exp(f / p / 60.0).scaled(ptf * f / 60.0)
        return tissue.frame_values(s, e, lam, corrected) + fb * blood + fr * rv
    raise AssertionError(model)


def _ode_degrado(params: dict[str, float], schedule: FrameSchedule, half_life_s: float) -> np.ndarray:
    """DeGrado by an ODE solver: dC/dt = F C_LV(t) (1 - 0.077 t/60) - k2 C, frames by quadrature."""
    f = params["mbf_ml_per_min_per_g"] / 60.0
    k2 = params["k2_per_min"] / 60.0
    lam = math.log(2) / half_life_s

    def rhs(t, c):
        return [f * BOLUS(np.array([t]))[0] * max(0.0, 1 - 0.077 * t / 60.0) - k2 * c[0]]

    sol = integrate.solve_ivp(rhs, (0.0, float(schedule.end_s[-1])), [0.0], method="DOP853", rtol=1e-11, atol=1e-6,
                              dense_output=True, max_step=0.5)
    out = []
    for a, b in zip(schedule.start_s, schedule.end_s):
        num = integrate.quad(lambda t: sol.sol(t)[0] * math.exp(-lam * t), a, b, limit=200, epsabs=0, epsrel=1e-10)[0]
        den = integrate.quad(lambda t: math.exp(-lam * t), a, b)[0]
        out.append(num / den)
    blood = BOLUS.frame_values(schedule.start_s, schedule.end_s, lam, True)
    return (1 - params["blood_fraction"]) * np.array(out) + params["blood_fraction"] * blood


# ------------------------------------------------------------------------------------------
# extraction and constants
# ------------------------------------------------------------------------------------------

def test_lortie_k1_anchors_and_inverse() -> None:
    anchors = {0.5: 0.391, 1.0: 0.590, 2.0: 0.876, 3.0: 1.128, 4.0: 1.369}
    for f, k1 in anchors.items():
        assert abs(float(K.lortie_k1(f)) - k1) <= 1e-3, (f, float(K.lortie_k1(f)))
    flows = np.geomspace(0.01, 20, 400)
    np.testing.assert_allclose(K.lortie_mbf(K.lortie_k1(flows)), flows, rtol=1e-12)
    for f in (0.05, 0.7, 6.0):  # a bracketing root search agrees
        k1 = float(K.lortie_k1(f))
        ref = optimize.brentq(lambda x, k1=k1: x * (1 - 0.77 * math.exp(-0.63 / x)) - k1, 1e-3, 20.0, xtol=1e-14)
        assert abs(float(K.lortie_mbf(k1)) - ref) < 1e-10
    assert float(K.lortie_mbf(0.0)) == 0.0 and np.isnan(K.lortie_mbf(np.nan))
    model = K.Rb82Lortie()
    assert model.constants()["extraction_a"] == 0.77 and model.constants()["extraction_b_ml_per_min_per_g"] == 0.63


def test_ucla_rate_constants_match_the_note() -> None:
    k1, k2, k3 = K.NH3UCLA().rate_constants(1.0)
    assert (k1, round(k2, 2), round(k3, 2)) == (1.0, 1.25, 5.95)
    assert round(K.NH3UCLA().net_extraction(1.0), 3) == 0.826
    assert K.NH3DeGrado().metabolite_slope_per_min == 0.077 and K.NH3DeGrado().fit_end_s == 240.0
    assert K.H2OIida().partition_coefficient_ml_per_ml == 0.9464
    for model in K.MODELS.values():
        constants = model.constants()
        assert constants["model"] == model.name and constants["tracer"] == model.tracer.name


# ------------------------------------------------------------------------------------------
# model curves against the independent implementation
# ------------------------------------------------------------------------------------------

def test_convolution_is_exact_for_piecewise_linear_input() -> None:
    dt = 0.5
    t = np.arange(0, 60.0 + dt, dt)
    rng = np.random.default_rng(0)
    c = np.concatenate([[0.0], rng.uniform(0, 10, t.size - 1)])
    for k in (0.0, 1e-6, 0.01, 0.3, 5.0):
        y = K.convolve_exponential(c, dt, k)
        # from scratch: y(t_n) = sum over linear pieces of int exp(-k (t_n - s)) c(s) ds, by Gauss-Legendre
        nodes, weights = np.polynomial.legendre.leggauss(8)
        ref = np.zeros_like(t)
        for n in range(1, t.size):
            total = 0.0
            for j in range(n):
                s = t[j] + (nodes + 1) / 2 * dt
                cs = c[j] + (c[j + 1] - c[j]) * (s - t[j]) / dt
                total += np.sum(weights * cs * np.exp(-k * (t[n] - s))) * dt / 2
            ref[n] = total
        np.testing.assert_allclose(y, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("corrected", [True, False])
@pytest.mark.parametrize("model,params", [
    (K.Rb82Lortie(), {"mbf_ml_per_min_per_g": 0.8, "k2_per_min": 0.17, "blood_fraction": 0.3, "rv_fraction": 0.08}),
    (K.Rb82Lortie(), {"mbf_ml_per_min_per_g": 4.0, "k2_per_min": 0.45, "blood_fraction": 0.4}),
    (K.NH3UCLA(), {"mbf_ml_per_min_per_g": 0.9, "blood_fraction": 0.3}),
    (K.NH3UCLA(), {"mbf_ml_per_min_per_g": 3.5, "blood_fraction": 0.25, "rv_fraction": 0.05}),
    (K.H2OIida(), {"ptmbf_ml_per_min_per_ml": 1.3, "perfusable_tissue_fraction": 0.7, "blood_fraction": 0.3}),
    (K.H2OIida(), {"ptmbf_ml_per_min_per_ml": 5.0, "perfusable_tissue_fraction": 0.6, "blood_fraction": 0.2,
                   "rv_fraction": 0.1}),
])
def test_model_curve_matches_closed_form(model, params, corrected) -> None:
    schedule = tac.frame_schedule(model, "default")
    got = K.model_curve(model, schedule, params, blood_input=_sampled(BOLUS, schedule.end_s[-1]),
                        rv_input=_sampled(RV_BOLUS, schedule.end_s[-1]), decay_corrected=corrected, dt_s=0.02)
    ref = _closed_form(model, params, schedule, corrected)
    assert np.all(ref[-3:] > 0)
    rel = np.abs(got - ref) / np.max(ref)
    assert rel.max() <= 1e-3, (model.name, rel.max())


def test_degrado_curve_matches_an_ode_solver() -> None:
    model = K.NH3DeGrado()
    schedule = tac.frame_schedule(model)
    params = {"mbf_ml_per_min_per_g": 2.2, "k2_per_min": 0.2, "blood_fraction": 0.35}
    got = K.model_curve(model, schedule, params, blood_input=_sampled(BOLUS, schedule.end_s[-1]), dt_s=0.02)
    ref = _ode_degrado(params, schedule, model.half_life_s)
    assert (np.abs(got - ref) / ref.max()).max() <= 1e-3


# ------------------------------------------------------------------------------------------
# noise-free recovery
# ------------------------------------------------------------------------------------------

def _flows17() -> np.ndarray:
    return np.resize(FLOWS, 17)


@pytest.mark.parametrize("model", [K.Rb82Lortie(), K.Rb82Lortie(distribution_volume="region"),
                                   K.Rb82Lortie(distribution_volume="global_tac"), K.NH3DeGrado(), K.NH3UCLA(),
                                   K.H2OIida()], ids=lambda m: f"{m.name}-{getattr(m, 'distribution_volume', '')}")
def test_noise_free_recovery_with_the_exact_input(model, seed) -> None:
    rng = np.random.default_rng(seed)
    study = tac.make_tac_study(model, _flows17(), rng, noise_level=0.0)
    fit = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                         input_function=study.blood_input, dt_s=0.1, fit_regional_tacs=False)
    err = fit.segment_mbf_ml_per_min_per_g / study.truth.mbf_ml_per_min_per_g - 1
    if isinstance(model, K.Rb82Lortie) and model.distribution_volume == "global_tac":
        # the global mean of segments with F 0.3..5 is not a one-tissue curve: its DV is biased
        # (documented on Rb82Lortie); k2 = K1/DV with the true DV gives the exact answer
        fits = K.fit_tacs(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                          input_function=study.blood_input, dt_s=0.1,
                          distribution_volume_ml_per_g=study.truth.distribution_volume_ml_per_g)
        err = np.array([f.mbf_ml_per_min_per_g for f in fits]) / study.truth.mbf_ml_per_min_per_g - 1
    assert np.abs(err).max() <= 1e-3, (seed, err)
    assert fit.model == model.name and fit.constants["model"] == model.name


@pytest.mark.parametrize("variant", ["default", "short", "fast"])
@pytest.mark.parametrize("mode", ["study", "region"])
def test_rb82_noise_free_recovery_from_frame_means_within_1_percent(variant, mode, seed) -> None:
    model = K.Rb82Lortie(distribution_volume=mode)
    rng = np.random.default_rng(seed)
    study = tac.make_tac_study(model, _flows17(), rng, noise_level=0.0, schedule_variant=variant)
    fit = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml)
    err = fit.segment_mbf_ml_per_min_per_g / study.truth.mbf_ml_per_min_per_g - 1
    assert np.abs(err).max() <= 0.01, (seed, err)
    assert all(not flags for flags in fit.segment_flags), (seed, fit.segment_flags)
    if mode == "study":
        assert abs(fit.distribution_volume_ml_per_g / study.truth.distribution_volume_ml_per_g - 1) < 0.01


@pytest.mark.parametrize("model,short_frames", [(K.NH3DeGrado(), ((24, 5.0), (4, 30.0), (4, 60.0))),
                                                (K.NH3UCLA(), ((24, 5.0), (4, 30.0), (4, 60.0))),
                                                (K.H2OIida(), ((30, 2.0), (3, 10.0), (3, 20.0), (4, 30.0)))],
                         ids=["degrado", "ucla", "water"])
def test_frame_mean_input_limit_for_nh3_and_water(model, short_frames, seed) -> None:
    """With 5 s (NH3) / 2 s (water) first frames the 1 % holds; the clinical schedule's limit is measured."""
    rng = np.random.default_rng(seed)
    fast = FrameSchedule.from_durations(short_frames)
    study = tac.make_tac_study(model, _flows17(), rng, noise_level=0.0, schedule=fast)
    fit = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                         fit_regional_tacs=False)
    err = fit.segment_mbf_ml_per_min_per_g / study.truth.mbf_ml_per_min_per_g - 1
    assert np.abs(err).max() <= 0.01, (seed, err)
    # clinical schedule (10 s / 5 s first frames): the frame-averaged bolus limits high F. Measured
    # over 40 random input shapes and the corners of the shape ranges (bench part A): NH3 <= 1 %
    # up to F = 3 and <= 1.5 % at F = 5; water <= 1 % up to F = 1 and <= 5 % at F = 5.
    study = tac.make_tac_study(model, _flows17(), rng, noise_level=0.0)
    fit = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                         fit_regional_tacs=False)
    err = fit.segment_mbf_ml_per_min_per_g / study.truth.mbf_ml_per_min_per_g - 1
    water = isinstance(model, K.H2OIida)
    low = study.truth.mbf_ml_per_min_per_g <= (1.0 if water else 3.0)
    assert np.abs(err[low]).max() <= 0.01, (seed, err)
    assert np.abs(err).max() <= (0.08 if water else 0.025), (seed, err)


def test_decay_uncorrected_frames_give_the_same_mbf(seed) -> None:
    model = K.Rb82Lortie()
    rng = np.random.default_rng(seed)
    mbf = rng.uniform(0.6, 4.0, 17)
    corrected = tac.make_tac_study(model, mbf, np.random.default_rng(seed), noise_level=0.0)
    raw = tac.make_tac_study(model, mbf, np.random.default_rng(seed), noise_level=0.0, decay_corrected=False)
    d = corrected.schedule.mean_decay_factor(model.decay_constant_per_s)
    np.testing.assert_allclose(raw.segment_tacs_bq_per_ml, corrected.segment_tacs_bq_per_ml * d[:, None], rtol=1e-12)
    a = K.fit_segments(model, corrected.schedule, corrected.blood_bq_per_ml, corrected.segment_tacs_bq_per_ml)
    b = K.fit_segments(model, raw.schedule, raw.blood_bq_per_ml, raw.segment_tacs_bq_per_ml, decay_corrected=False)
    np.testing.assert_allclose(b.segment_mbf_ml_per_min_per_g, a.segment_mbf_ml_per_min_per_g, rtol=1e-6)
    bf_a = K.basis_function_map(model, corrected.schedule, corrected.blood_bq_per_ml, corrected.segment_tacs_bq_per_ml)
    bf_b = K.basis_function_map(model, raw.schedule, raw.blood_bq_per_ml, raw.segment_tacs_bq_per_ml,
                                decay_corrected=False)
    np.testing.assert_allclose(bf_b.mbf_ml_per_min_per_g, bf_a.mbf_ml_per_min_per_g, rtol=1e-6)
    # treating uncorrected Rb-82 data as corrected is a gross error, not a rounding
    c = K.fit_segments(model, raw.schedule, raw.blood_bq_per_ml, raw.segment_tacs_bq_per_ml, fit_regional_tacs=False)
    assert np.max(np.abs(c.segment_mbf_ml_per_min_per_g / mbf - 1)) > 0.05


def test_septal_rv_spillover_term(seed) -> None:
    model = K.Rb82Lortie()
    rng = np.random.default_rng(seed)
    study = tac.make_tac_study(model, rng.uniform(0.6, 1.4, 17), rng, noise_level=0.0, rv_fraction=0.1)
    with_rv = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                             rv_bq_per_ml=study.rv_bq_per_ml, rv_spillover=True, fit_regional_tacs=False)
    err = with_rv.segment_mbf_ml_per_min_per_g / study.truth.mbf_ml_per_min_per_g - 1
    assert np.abs(err).max() <= 0.01, (seed, err)
    septal = [s - 1 for s in K.SEPTAL_SEGMENTS]
    rv = np.array([with_rv.segments[i].parameters["rv_fraction"] for i in septal])
    np.testing.assert_allclose(rv, 0.1, atol=0.01)
    assert all("rv_fraction" not in s.parameters for i, s in enumerate(with_rv.segments) if i not in septal)
    with pytest.raises(ValueError):
        K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml, rv_spillover=True)


# ------------------------------------------------------------------------------------------
# results: segments, territories, global, MFR, RPP
# ------------------------------------------------------------------------------------------

def test_segment_fit_result_and_flow_reserve(seed) -> None:
    model = K.Rb82Lortie()
    rng = np.random.default_rng(seed)
    rest, stress = tac.make_rest_stress(model, rng, noise_level=0.0)
    fr = K.fit_segments(model, rest.schedule, rest.blood_bq_per_ml, rest.segment_tacs_bq_per_ml)
    fs = K.fit_segments(model, stress.schedule, stress.blood_bq_per_ml, stress.segment_tacs_bq_per_ml)
    mbf = fr.segment_mbf_ml_per_min_per_g
    assert mbf.shape == (17,) and fr.global_mbf_ml_per_min_per_g == pytest.approx(mbf.mean())
    for territory, segments in TERRITORY_SEGMENTS.items():
        assert fr.territory_mbf_ml_per_min_per_g[territory] == pytest.approx(mbf[[s - 1 for s in segments]].mean())
    assert set(fr.regional_fits) == {"LAD", "LCx", "RCA", "global"}
    assert [s.region for s in fr.segments] == [str(i) for i in range(1, 18)]
    first = fr.segments[0]
    assert first.model == model.name and first.constants["extraction_a"] == 0.77
    assert {"mbf_ml_per_min_per_g", "blood_fraction", "k1_ml_per_min_per_g", "k2_per_min",
            "distribution_volume_ml_per_g"} <= set(first.parameters)
    assert 0 < first.mbf_se_ml_per_min_per_g < 0.05 * first.mbf_ml_per_min_per_g
    assert fr.constants["distribution_volume_ml_per_g"] == fr.distribution_volume_ml_per_g

    reserve = K.flow_reserve(fr, fs)
    np.testing.assert_allclose(reserve.segment_mfr, fs.segment_mbf_ml_per_min_per_g / mbf)
    np.testing.assert_allclose(reserve.segment_mfr, stress.truth.mbf_ml_per_min_per_g / rest.truth.mbf_ml_per_min_per_g,
                               rtol=0.01)
    assert reserve.global_mfr == pytest.approx(fs.global_mbf_ml_per_min_per_g / fr.global_mbf_ml_per_min_per_g)
    assert reserve.mean_segment_mfr == pytest.approx(reserve.segment_mfr.mean())
    for territory in TERRITORY_SEGMENTS:
        assert reserve.territory_mfr[territory] == pytest.approx(
            fs.territory_mbf_ml_per_min_per_g[territory] / fr.territory_mbf_ml_per_min_per_g[territory])
    np.testing.assert_array_equal(reserve.segment_impaired, reserve.segment_mfr < 2.0)
    assert reserve.any_segment_impaired == bool(np.any(reserve.segment_mfr < 2.0))
    assert reserve.model_rest == reserve.model_stress == model.name and reserve.flags == ()
    assert reserve.rate_pressure_product_mmhg_per_min is None and reserve.segment_mfr_rpp_corrected is None

    # threshold and RPP correction: MBF_rest,corr = MBF_rest * RPP_ref / (HR * SBP)
    strict = K.flow_reserve(fr, fs, impaired_below=10.0, rest_heart_rate_per_min=80, rest_systolic_pressure_mmhg=150)
    assert strict.any_segment_impaired and strict.global_impaired and all(strict.territory_impaired.values())
    assert strict.rate_pressure_product_mmhg_per_min == 12_000.0
    np.testing.assert_allclose(strict.segment_rest_mbf_rpp_corrected_ml_per_min_per_g, mbf * 10_000 / 12_000)
    np.testing.assert_allclose(strict.segment_mfr_rpp_corrected, reserve.segment_mfr * 1.2)
    np.testing.assert_allclose(strict.segment_mfr, reserve.segment_mfr)  # reported next to, never instead of
    assert strict.global_mfr_rpp_corrected == pytest.approx(reserve.global_mfr * 1.2)
    other = K.fit_segments(K.Rb82Lortie(distribution_volume="region"), rest.schedule, rest.blood_bq_per_ml,
                           rest.segment_tacs_bq_per_ml, fit_regional_tacs=False)
    assert K.flow_reserve(other, fs).flags == ()  # same model name, other DV option
    with pytest.raises(ValueError):
        K.rate_pressure_product(0, 120)


def test_invalid_inputs_are_refused() -> None:
    with pytest.raises(ValueError):
        FrameSchedule(np.array([0.0, 5.0]), np.array([10.0, 10.0]))  # overlap
    with pytest.raises(ValueError):
        FrameSchedule(np.array([0.0]), np.array([0.0]))
    schedule = tac.frame_schedule("Rb-82")
    model = K.Rb82Lortie()
    with pytest.raises(ValueError):
        K.fit_segments(model, schedule, np.ones(16), np.ones((16, 16)))
    with pytest.raises(ValueError):
        K.fit_tacs(model, schedule, np.ones(15), np.ones((16, 3)))
    with pytest.raises(ValueError):
        K.fit_tacs(K.Rb82Lortie(fit_end_s=20.0), schedule, np.ones(16), np.ones((16, 3)))
    with pytest.raises(ValueError):
        K.default_model("Tc-99m")
    assert isinstance(K.default_model("Rb-82"), K.Rb82Lortie)
    assert isinstance(K.default_model("N-13 ammonia"), K.NH3DeGrado)
    assert isinstance(K.default_model("O-15 water"), K.H2OIida)


# ------------------------------------------------------------------------------------------
# clinical noise: population statistics over fresh seeds
# ------------------------------------------------------------------------------------------

N_STUDIES = 20  # x 17 segments = 340 segment replicates per condition


def test_rb82_segment_mbf_and_mfr_at_clinical_noise(seed) -> None:
    model = K.Rb82Lortie()
    rng = np.random.default_rng(seed)
    errors: dict[str, list[np.ndarray]] = {"rest": [], "stress": [], "mfr": []}
    z: list[np.ndarray] = []
    for _ in range(N_STUDIES):
        rest, stress = tac.make_rest_stress(model, rng, noise_level=0.05)
        fits = {}
        for state, study in (("rest", rest), ("stress", stress)):
            fit = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                 fit_regional_tacs=False)
            fits[state] = fit
            errors[state].append(fit.segment_mbf_ml_per_min_per_g / study.truth.mbf_ml_per_min_per_g - 1)
            z.append((fit.segment_mbf_ml_per_min_per_g - study.truth.mbf_ml_per_min_per_g)
                     / fit.segment_mbf_se_ml_per_min_per_g)
        reserve = K.flow_reserve(fits["rest"], fits["stress"])
        errors["mfr"].append(reserve.segment_mfr / (stress.truth.mbf_ml_per_min_per_g / rest.truth.mbf_ml_per_min_per_g) - 1)
    bounds = {"rest": 0.20, "stress": 0.14, "mfr": 0.25}
    for condition, values in errors.items():
        e = np.concatenate(values)
        assert e.size >= 300
        within = float(np.mean(np.abs(e) <= bounds[condition]))
        summary = f"seed {seed}: {condition} bias {e.mean():+.4f} SD {e.std():.4f} within {within:.3f}"
        assert abs(e.mean()) <= 0.03, summary
        assert within >= 0.95, summary
    zz = np.concatenate(z)
    assert 0.7 <= zz.std() <= 1.6, f"seed {seed}: standard errors off, z SD {zz.std():.2f}"


# ------------------------------------------------------------------------------------------
# basis-function voxel method
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", [K.Rb82Lortie(distribution_volume="region"), K.NH3DeGrado(), K.NH3UCLA(),
                                   K.H2OIida()], ids=lambda m: m.name)
def test_basis_functions_agree_with_the_segment_fit(model, seed) -> None:
    rng = np.random.default_rng(seed)
    study = tac.make_tac_study(model, _flows17(), rng, noise_level=0.0)
    nls = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                         input_function=study.blood_input, fit_regional_tacs=False).segment_mbf_ml_per_min_per_g
    bf = K.basis_function_map(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                              input_function=study.blood_input)
    assert bf.valid.all() and bf.mbf_ml_per_min_per_g.shape == (17,)
    assert np.abs(bf.mbf_ml_per_min_per_g / nls - 1).max() <= 0.002, (seed, bf.mbf_ml_per_min_per_g / nls - 1)
    if isinstance(model, K.Rb82Lortie):
        nls = K.fit_segments(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                             fit_regional_tacs=False).segment_mbf_ml_per_min_per_g
        bf = K.basis_function_map(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml)
        assert np.abs(bf.mbf_ml_per_min_per_g / nls - 1).max() <= 0.005, seed
        study_dv = K.fit_segments(K.Rb82Lortie(), study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                  fit_regional_tacs=False)
        bf = K.basis_function_map(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                  distribution_volume_ml_per_g=study_dv.distribution_volume_ml_per_g)
        assert np.abs(bf.mbf_ml_per_min_per_g / study_dv.segment_mbf_ml_per_min_per_g - 1).max() <= 0.005, seed


def test_basis_function_map_is_vectorised(seed) -> None:
    model = K.Rb82Lortie()
    rng = np.random.default_rng(seed)
    study = tac.make_tac_study(model, rng.uniform(0.6, 1.4, 17), rng, noise_level=0.0)
    n = 40_000
    pick = rng.integers(0, 17, n)
    voxels = study.segment_tacs_bq_per_ml[:, pick] * rng.uniform(0.5, 1.5, n)  # partial volume: scale only
    voxels[:, :5] = 0.0  # background voxels: no positive tissue term
    voxels[:, 5] = np.nan
    weights = study.schedule.duration_s  # one weight vector, so that voxel subsets are comparable
    t0 = time.perf_counter()
    small = K.basis_function_map(model, study.schedule, study.blood_bq_per_ml, voxels, chunk=1000, weights=weights)
    seconds = time.perf_counter() - t0
    # a per-voxel Python loop with a fit costs milliseconds per voxel; this is ~10 us per voxel
    assert seconds < 20.0, seconds
    assert not small.valid[:6].any() and np.all(small.mbf_ml_per_min_per_g[:6] == 0)
    whole = K.basis_function_map(model, study.schedule, study.blood_bq_per_ml, voxels[:, 6:2006], weights=weights)
    np.testing.assert_allclose(whole.mbf_ml_per_min_per_g, small.mbf_ml_per_min_per_g[6:2006], rtol=1e-9)
    # the same TAC scaled: K1-scale and blood fraction scale together, so F drifts with scale (PV),
    # but every voxel of one segment at scale 1 gives the segment's value
    ones = K.basis_function_map(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml[:, pick[:50]],
                                weights=weights)
    segment = K.basis_function_map(model, study.schedule, study.blood_bq_per_ml, study.segment_tacs_bq_per_ml,
                                   weights=weights)
    np.testing.assert_allclose(ones.mbf_ml_per_min_per_g, segment.mbf_ml_per_min_per_g[pick[:50]], rtol=1e-9)
