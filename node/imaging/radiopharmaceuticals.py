"""Myocardial perfusion radiopharmaceuticals: codes, isotopes and energy windows.

Agent codes are SNOMED CT (``SCT``) from DICOM CID 3111 "Nuclear Cardiology
Radiopharmaceuticals" (checked against pydicom 3.0's concept tables); the
radionuclide codes come from CID 18 "Isotopes in Radiopharmaceuticals". A
tracer is identified by a short key (``tc99m_sestamibi``, ``tc99m_tetrofosmin``,
``tl201``) everywhere else in the node.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "PET_TRACERS", "PETTracer", "Tracer", "TRACERS", "pet_tracer_from_code", "pet_tracer_from_text", "tracer_from_code",
    "tracer_from_text",
]


@dataclass(frozen=True)
class Tracer:
    """One myocardial perfusion tracer.

    Energies in keV, half-life in seconds, ``relative_counts`` is the count
    level relative to a Tc-99m study of the same acquisition time and
    ``typical_fwhm_mm`` the typical reconstructed system resolution (FWHM, mm)
    with a low-energy high-resolution collimator: Tl-201's 69-83 keV X-rays
    scatter more and are detected with a worse intrinsic resolution than
    Tc-99m's 140 keV photons. Both are synthetic-camera values (the phantoms
    and the synthetic normal cohorts of :mod:`node.synth` and
    :mod:`node.quant.normal_limits` use them); no DICOM attribute carries the
    resolution of a real reconstruction.
    """

    key: str
    display_name: str
    agent_code: tuple[str, str, str]  # (value, scheme, meaning), CID 3111
    radionuclide_code: tuple[str, str, str]  # CID 18
    radiopharmaceutical_text: str  # Radiopharmaceutical (0018,0031)
    half_life_s: float
    photopeak_kev: float
    window_kev: tuple[float, float]  # lower, upper (20 % window)
    window_name: str
    relative_counts: float
    typical_dose_mbq: float
    typical_fwhm_mm: float


TRACERS: dict[str, Tracer] = {
    "tc99m_sestamibi": Tracer(
        key="tc99m_sestamibi",
        display_name="Tc-99m sestamibi",
        agent_code=("424299003", "SCT", "Tc-99m sestamibi"),
        radionuclide_code=("72454006", "SCT", "^99m^Technetium"),
        radiopharmaceutical_text="Tc99m Sestamibi",
        half_life_s=21624.12,
        photopeak_kev=140.5,
        window_kev=(126.45, 154.55),
        window_name="TC99M",
        relative_counts=1.0,
        typical_dose_mbq=740.0,
        typical_fwhm_mm=12.0,
    ),
    "tc99m_tetrofosmin": Tracer(
        key="tc99m_tetrofosmin",
        display_name="Tc-99m tetrofosmin",
        agent_code=("424118002", "SCT", "Tc-99m tetrofosmin"),
        radionuclide_code=("72454006", "SCT", "^99m^Technetium"),
        radiopharmaceutical_text="Tc99m Tetrofosmin",
        half_life_s=21624.12,
        photopeak_kev=140.5,
        window_kev=(126.45, 154.55),
        window_name="TC99M",
        relative_counts=1.0,
        typical_dose_mbq=740.0,
        typical_fwhm_mm=12.0,
    ),
    "tl201": Tracer(
        key="tl201",
        display_name="Thallium-201",
        agent_code=("353842007", "SCT", "Thallium-201"),
        radionuclide_code=("60057003", "SCT", "^201^Thallium"),
        radiopharmaceutical_text="Tl201 Thallous Chloride",
        half_life_s=262872.0,
        photopeak_kev=70.8,
        window_kev=(63.7, 77.9),
        window_name="TL201",
        relative_counts=0.3,
        typical_dose_mbq=111.0,
        typical_fwhm_mm=13.5,
    ),
}

# Codes other senders use for the same agents (CID 25 "Radiopharmaceuticals").
_EXTRA_AGENT_CODES: dict[str, str] = {
    "73685002": "tl201",  # Thallous chloride Tl^201^
}


def tracer_from_code(code_value: str | None) -> str | None:
    """Tracer key for a Radiopharmaceutical Code Sequence value (CID 3111 / 25), or None."""
    if not code_value:
        return None
    for tracer in TRACERS.values():
        if tracer.agent_code[0] == code_value:
            return tracer.key
    return _EXTRA_AGENT_CODES.get(code_value)


def tracer_from_text(text: str | None) -> str | None:
    """Tracer key guessed from free text (Radiopharmaceutical (0018,0031)), or None.

    Recognises "sestamibi"/"mibi"/"cardiolite", "tetrofosmin"/"myoview" and
    "thallium"/"tl201"/"tl-201" (case-insensitive).
    """
    if not text:
        return None
    lowered = text.lower().replace(" ", "")
    if "sestamibi" in lowered or "mibi" in lowered or "cardiolite" in lowered:
        return "tc99m_sestamibi"
    if "tetrofosmin" in lowered or "myoview" in lowered:
        return "tc99m_tetrofosmin"
    if "thall" in lowered or "tl201" in lowered or "tl-201" in lowered or "201tl" in lowered:
        return "tl201"
    return None


@dataclass(frozen=True)
class PETTracer:
    """One PET perfusion (or viability) tracer: codes, name and physical half-life in seconds.

    Agent codes from CID 4021 "PET Radiopharmaceutical" (SCT; flurpiridaz DCM 126718),
    radionuclide codes from CID 4020, half-lives from pet_mbf.md section 4.2 (the same values
    as :mod:`node.quant.kinetics` within 1 %). Kept apart from :data:`TRACERS` (SPECT tracers
    carry gamma-camera energy windows a PET tracer has not).
    """

    key: str
    display_name: str
    agent_code: tuple[str, str, str]
    radionuclide_code: tuple[str, str, str]
    half_life_s: float


PET_TRACERS: dict[str, PETTracer] = {
    "rb82_chloride": PETTracer("rb82_chloride", "Rb-82 chloride", ("129503007", "SCT", "Rubidium chloride Rb^82^"),
                               ("79197006", "SCT", "^82^Rubidium"), 75.45),
    "n13_ammonia": PETTracer("n13_ammonia", "N-13 ammonia", ("129508003", "SCT", "Ammonia N^13^"),
                             ("21576001", "SCT", "^13^Nitrogen"), 597.9),
    "o15_water": PETTracer("o15_water", "O-15 water", ("129505000", "SCT", "Oxygen-water O^15^"),
                           ("129504001", "SCT", "^15^Oxygen"), 122.24),
    "f18_flurpiridaz": PETTracer("f18_flurpiridaz", "F-18 flurpiridaz", ("126718", "DCM", "Flurpiridaz F^18^"),
                                 ("77004003", "SCT", "^18^Fluorine"), 6586.2),
    "f18_fdg": PETTracer("f18_fdg", "F-18 FDG", ("35321007", "SCT", "Fluorodeoxyglucose F^18^"),
                         ("77004003", "SCT", "^18^Fluorine"), 6586.2),
}


def pet_tracer_from_code(code_value: str | None) -> str | None:
    """PET tracer key for a Radiopharmaceutical Code Sequence value (CID 4021), or None."""
    if not code_value:
        return None
    for tracer in PET_TRACERS.values():
        if tracer.agent_code[0] == code_value:
            return tracer.key
    return None


def pet_tracer_from_text(text: str | None) -> str | None:
    """PET tracer key guessed from free text (Radiopharmaceutical (0018,0031)), or None.

    Recognises rubidium / Rb-82, ammonia / NH3 / N-13, water / H2O / O-15, flurpiridaz and
    FDG / fluorodeoxyglucose (case-insensitive).
    """
    if not text:
        return None
    lowered = text.lower().replace(" ", "").replace("^", "")
    if "rubidium" in lowered or "rb82" in lowered or "rb-82" in lowered or "82rb" in lowered:
        return "rb82_chloride"
    if "ammonia" in lowered or "nh3" in lowered or "n13" in lowered or "n-13" in lowered or "13n" in lowered:
        return "n13_ammonia"
    if "water" in lowered or "h2o" in lowered or "o15" in lowered or "o-15" in lowered or "15o" in lowered:
        return "o15_water"
    if "flurpiridaz" in lowered:
        return "f18_flurpiridaz"
    if "fdg" in lowered or "fluorodeoxyglucose" in lowered:
        return "f18_fdg"
    return None

