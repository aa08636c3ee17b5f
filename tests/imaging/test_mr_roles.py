"""MR series roles: attributes first, descriptions second, the plane from the study's own short-axis slices.

A cardiac MR study is built here with pydicom (cine short axis one series per slice, cine long
axis, LGE magnitude and PSIR stacks, a TI scout, a T1 map, flow phase images, a localizer) in
three description variants: vendor-like, blank (attributes alone) and misleading (the
attributes must win). Every series must get its true role.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from node.imaging.mr import LV_AXIS_PRIOR, MR_ROLES, load_cmr_study, mr_series_role
from node.ledger import Ledger
from node.pipelines.routing import SeriesSummary, StudySummary, describe_series, routing_attributes
from node.uids import deterministic_uid
from tests.imaging.test_mr_loading import AXIS, PHANTOM_SEEDS, Image, classic, plane_axes, tilted
from tests.support.cmr import VARIANTS, cmr_study, write_study
from tests.support.worker import record_instances

SHAPE = (6, 6)
#: series -> description per variant (vendor-like, blank, misleading)
DESCRIPTIONS: dict[str, tuple[str, str, str]] = {
    "cine_sax": ("CINE_segmented_SAX_b{n}", "", "LGE_PSIR_b{n}"),
    "cine_lax": ("CINE_segmented_LAX_4Ch", "", "SAX_MDE"),
    "lge_mag": ("SAX_DELAY_TI=300_BH", "", "CINE_SAX"),
    "lge_psir": ("PS:SAX_SS_PSMDE", "", "MAG:SAX T1 map"),
    "ti_scout": ("SAX_MID_TI_SCOUT_CINE_IR", "", "SAX_FIESTA_BH"),
    "map": ("SAX_T1MAP_MOLLI_POST", "", "LGE SAX"),
    "flow": ("FLOW_AO_VENC150", "", "CINE SAX"),
    "localizer": ("TRUFI_LOC", "", "CINE"),
}
TRUE_ROLE = {"cine_sax": "cine_sax", "cine_lax": "cine_lax", "lge_mag": "lge_mag", "lge_psir": "lge_psir",
             "ti_scout": "ti_scout", "map": "map", "flow": "other", "localizer": "other"}


def _study(variant: int, axis: np.ndarray = AXIS, seed: int = 0) -> tuple[list[Dataset], dict[str, str]]:
    """The study's instances and SeriesInstanceUID -> true role."""
    rng = np.random.default_rng(seed)
    images: list[Image] = []
    truth: dict[str, str] = {}
    centre = np.array([20.0, -30.0, 10.0])
    row, _ = plane_axes(axis)
    lax_normal = row  # a plane that contains the LV axis

    def uid(name: str, *more: object) -> str:
        value = deterministic_uid("mr-roles", variant, seed, name, *more)
        truth[value] = TRUE_ROLE[name]
        return value

    def text(name: str, n: int = 0) -> str:
        return DESCRIPTIONS[name][variant].format(n=n)

    def pixels(value: float, signed: bool = False) -> np.ndarray:
        noise = rng.integers(0, 20, size=SHAPE)
        return (noise + value).astype(np.int16 if signed else np.uint16)

    for s in range(9):  # cine short axis, one series per slice (UK Biobank)
        series = uid("cine_sax", s)
        for p in range(25):
            images.append(Image(series, 20 + s, 25 - p, centre + (s - 4) * 9.0 * axis, axis, pixels(300),
                                trigger_ms=35.0 * p, cardiac_images=25, description=text("cine_sax", s + 1)))
    series = uid("cine_lax")
    for p in range(25):
        images.append(Image(series, 10, p + 1, centre, lax_normal, pixels(300), trigger_ms=35.0 * p, cardiac_images=25,
                            description=text("cine_lax")))
    lge_mag, lge_psir = uid("lge_mag"), uid("lge_psir")
    for s in range(9):
        position = centre + (s - 4) * 9.0 * axis
        images.append(Image(lge_mag, 40, 9 - s, position, axis, pixels(200), trigger_ms=450.0, inversion_ms=300.0,
                            description=text("lge_mag"), scanning="GR\\IR", variant="SP\\MP",
                            image_type=("ORIGINAL", "PRIMARY", "M", "NONE")))
        images.append(Image(lge_psir, 41, 9 - s, position, axis, pixels(-100, signed=True), trigger_ms=450.0,
                            inversion_ms=300.0, description=text("lge_psir"), scanning="GR\\IR", variant="SP\\MP",
                            image_type=("ORIGINAL", "PRIMARY", "R", "NONE"), signed=True))
    series = uid("ti_scout")
    for k in range(20):  # one mid slice, TI stepping with the trigger time
        images.append(Image(series, 30, k + 1, centre, axis, pixels(150), trigger_ms=100.0 + 30 * k,
                            inversion_ms=100.0 + 30 * k, cardiac_images=20, description=text("ti_scout"),
                            scanning="GR\\IR", variant="SP\\MP"))
    series = uid("map")
    for s in range(3):
        images.append(Image(series, 50, s + 1, centre + (s - 1) * 18.0 * axis, axis, pixels(450), trigger_ms=500.0,
                            description=text("map"), image_type=("DERIVED", "PRIMARY", "T1MAP", "NONE")))
    series = uid("flow")
    for p in range(20):
        images.append(Image(series, 60, p + 1, centre, tilted(axis, 70.0), pixels(2048), trigger_ms=40.0 * p,
                            cardiac_images=20, description=text("flow"), image_type=("ORIGINAL", "PRIMARY", "P", "NONE")))
    series = uid("localizer")
    for k, normal in enumerate((np.array([0.0, 0.0, 1.0]), np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0]))):
        images.append(Image(series, 1, k + 1, centre, normal, pixels(100), description=text("localizer"),
                            gated=False))
    order = rng.permutation(len(images))
    return [classic(images[i]) for i in order], truth


@pytest.mark.parametrize("variant", [0, 1, 2], ids=["vendor-descriptions", "blank-descriptions", "misleading"])
def test_every_series_gets_its_true_role(variant: int) -> None:
    datasets, truth = _study(variant)
    study = load_cmr_study(datasets)
    got = {uid: decision.role for uid, decision in study.decisions.items()}
    wrong = {uid: (got[uid], truth[uid], study.decisions[uid].reasons) for uid in truth if got[uid] != truth[uid]}
    assert not wrong
    assert study.lv_axis is not None and abs(float(study.lv_axis @ AXIS)) > np.cos(np.deg2rad(1.0))
    assert set(study.stacks) == {"cine_sax", "lge_mag", "lge_psir"}
    assert study.stacks["cine_sax"].stack.voxels.shape == (25, 9, *SHAPE)
    assert study.stacks["lge_mag"].stack.voxels.shape == (1, 9, *SHAPE)
    assert study.stacks["lge_psir"].stack.voxels.min() < 0  # signed PSIR values kept
    assert all(not stack.issues for stack in study.stacks.values())


@pytest.mark.parametrize("degrees", [40.0, 65.0])
def test_the_plane_comes_from_the_studys_own_stack_when_the_heart_lies_unlike_the_prior(degrees: float) -> None:
    axis = tilted(LV_AXIS_PRIOR, degrees)
    datasets, truth = _study(1, axis=axis, seed=1)
    study = load_cmr_study(datasets)
    assert {uid: d.role for uid, d in study.decisions.items()} == truth
    lax = next(uid for uid, role in truth.items() if role == "cine_lax")
    assert any("parallel slice positions" in reason for reason in study.decisions[lax].reasons)


def test_reasons_name_the_attributes_that_decided() -> None:
    datasets, truth = _study(1)
    study = load_cmr_study(datasets)
    by_role = {truth[uid]: decision for uid, decision in study.decisions.items() if truth[uid] != "other"}
    assert any("InversionTime (0018,0082)" in r and "300 ms" in r for r in by_role["lge_mag"].reasons)
    assert any("ImageType (0008,0008) PSIR or R" in r for r in by_role["lge_psir"].reasons)
    assert any("inversion times at one position" in r for r in by_role["ti_scout"].reasons)
    assert any("T1MAP" in r for r in by_role["map"].reasons)
    assert any("25 cardiac phases" in r for r in by_role["cine_sax"].reasons)
    assert dict(by_role["cine_sax"].scores).keys() == set(MR_ROLES)


def test_routing_attributes_carry_the_role_and_its_reasons_for_the_ledger() -> None:
    datasets, truth = _study(0, seed=2)
    summary = StudySummary.from_datasets(datasets)
    for series in summary.series:
        assert series.mr_series_role == truth[series.series_instance_uid], series.mr_role_reasons
        assert series.mr_role_reasons
    lge = next(s for s in summary.series if s.mr_series_role == "lge_mag")
    assert describe_series(lge) == "LGE magnitude MR images"
    first = datasets[0]
    attributes = routing_attributes(first)
    assert attributes["mr_series_role"] == mr_series_role(first)
    assert isinstance(attributes["mr_role_reasons"], list)
    stored = SeriesSummary.from_attributes(str(first.SeriesInstanceUID), attributes, 1)
    assert stored.mr_role_reasons == tuple(attributes["mr_role_reasons"])


def test_non_mr_instances_have_no_role() -> None:
    ds = Dataset()
    ds.SOPClassUID, ds.Modality = "1.2.840.10008.5.1.4.1.1.20", "NM"
    assert mr_series_role(ds) == ""
    assert routing_attributes(ds)["mr_role_reasons"] == []


@pytest.mark.parametrize("variant", VARIANTS)
def test_100_percent_correct_roles_on_the_phantom_variants(variant: str) -> None:
    """The synthetic CMR studies (node.synth.cmr) in every layout variant: the loader's role of every series
    equals the writer's truth, study-level and per instance (the routing attribute)."""
    for seed in PHANTOM_SEEDS:
        study = cmr_study(variant, seed)
        loaded = load_cmr_study(study.datasets)
        assert {uid: d.role for uid, d in loaded.decisions.items()} == study.truth.series_roles, (variant, seed)
        routed = StudySummary.from_datasets(study.datasets)
        assert {s.series_instance_uid: s.mr_series_role for s in routed.series} == study.truth.series_roles


@pytest.mark.parametrize("variant", ["standard", "enhanced"])
def test_the_routing_role_needs_no_pixel_data(variant: str) -> None:
    """The listener and ``record_instances`` read headers with ``stop_before_pixels``: the role must not change."""
    study = cmr_study(variant, 0)
    for ds in study.datasets:
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        header = pydicom.dcmread(io.BytesIO(buffer.getvalue()), stop_before_pixels=True)
        assert "PixelData" not in header
        assert mr_series_role(header) == study.truth.series_roles[str(ds.SeriesInstanceUID)]


def test_the_ledger_keeps_each_series_role_and_its_reasons(tmp_path: Path) -> None:
    """Files recorded as the listener records them (headers only): the ledger's study summary has the roles."""
    truth = write_study(tmp_path / "study", "siemens", 1)
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    try:
        record_instances(ledger, sorted((tmp_path / "study").glob("series_*/*.dcm")))
        summary = ledger.studies.summary(_study_uid(tmp_path / "study"))
        assert {s.series_instance_uid: s.mr_series_role for s in summary.series} == truth.series_roles
        assert all(s.mr_role_reasons for s in summary.series)
    finally:
        ledger.close()


def _study_uid(folder: Path) -> str:
    first = next(iter(sorted(folder.glob("series_*/*.dcm"))))
    return str(pydicom.dcmread(first, stop_before_pixels=True).StudyInstanceUID)


#: descriptions seen in real exams (reference note 3.2: GE strings of rohanshad/cmr_toolkit, UK Biobank) and the
#: synthetic vendors' (node.synth.cmr), each with the role it must give when the description is all there is
DESCRIPTION_ONLY = {
    "MAG:SAX_SS_PSMDE": "lge_mag", "PS:SAX_SS_PSMDE": "lge_psir", "de_tfl_psir_SAX_MAG": "lge_mag",
    "de_tfl_psir_SAX_PSIR": "lge_psir", "LGE_SA_PSIR_M": "lge_mag", "LGE_SA_PSIR_R": "lge_psir",
    "SAX_IrP-FGRE_TI=240": "lge_mag", "SAX_DELAY_TI=260_BH": "lge_mag", "SAX_SSHMDE_FIESTA_TI=180": "lge_mag",
    "SAX_MDE_2RR_Broadband": "lge_mag", "SAX_FIESTA_BH": "cine_sax", "sBTFE_BH_SA": "cine_sax",
    "CINE_segmented_SAX_b3": "cine_sax", "4CH_FIESTA_BH": "cine_lax", "CINE_segmented_LAX_4Ch": "cine_lax",
    "TI_Scout_SAX_mid": "ti_scout", "SAX_MID_TI_SCOUT_CINE_IR": "ti_scout", "4CH_CineIR": "ti_scout",
    "Timing_IDRIVE": "ti_scout", "SAX_T2_MAP": "map", "4CH_MOLLI_ARC_POST_BH": "map", "SAX_FastPC_VENC": "other",
    "Tags_Grid_SAX": "other",
}


@pytest.mark.parametrize("description", sorted(DESCRIPTION_ONLY))
def test_descriptions_decide_when_the_attributes_are_silent(description: str) -> None:
    """A gated single image with no inversion, phase, Image Type or plane evidence: the words decide."""
    lax = any(word in description.upper() for word in ("4CH", "LAX"))
    normal = plane_axes(AXIS)[0] if lax else AXIS
    image = Image(deterministic_uid("words", description), 7, 1, np.zeros(3), normal, np.zeros(SHAPE, np.uint16),
                  description=description, image_type=("ORIGINAL", "PRIMARY", "OTHER"))
    assert mr_series_role(classic(image)) == DESCRIPTION_ONLY[description]
