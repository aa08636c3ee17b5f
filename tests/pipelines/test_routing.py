"""Routing and loading agree on the acquisition state of real-world SPECT series descriptions.

The descriptions are those vendors' workstations and sites write (GE Xeleris and Myovation,
Siemens syngo and Cedars QGS exports, Philips AutoSPECT and Astonish, Spectrum Dynamics
D-SPECT, site conventions with underscores and abbreviations), gated and summed, short-axis
and transaxial. For each one, the routing attributes (what the listener stores in the ledger
and ``cardionode process`` reads) and the NM loader must give the same state, the SPECT
pipeline's stress/rest rules must follow it, and a study named that way must complete by
the expected-series rule, not wait for the quiet period.
"""

from __future__ import annotations

import copy
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from pydicom import Dataset

from node.config import CompletenessRule, Settings
from node.imaging.nm import load_nm_series
from node.ledger import InstanceMeta, Ledger
from node.pipelines.routing import SeriesSummary, StudySummary, routing_attributes
from node.pipelines.spect_mpi import PIPELINE
from node.synth.spect.demo import demo_spec
from node.synth.spect.phantom import make_study
from node.synth.spect.study import build_study_datasets
from node.workflow.completeness import Assembler

# (Series Description, expected state, gated, short axis)
DESCRIPTIONS: tuple[tuple[str, str, bool, bool], ...] = (
    ("STRESS SA", "stress", False, True),
    ("Stress Gated SA", "stress", True, True),
    ("STRS GATED", "stress", True, True),
    ("ADENO SA", "stress", False, True),
    ("STR GATED SA", "stress", True, True),
    ("Lexiscan Gated SAX", "stress", True, True),
    ("REGADENOSON SA IRAC", "stress", False, True),
    ("EX SA IRNC", "stress", False, True),
    ("Exercise Stress AC SA", "stress", False, True),
    ("Stress_SA_NC", "stress", False, True),
    ("SA STRESS RECON - IRAC", "stress", False, True),
    ("STRESS-GATED-SA", "stress", True, True),
    ("Stress Emission SA (AC)", "stress", False, True),
    ("Tc99m Stress Tomo", "stress", False, False),
    ("STRESS TRANS", "stress", False, False),
    ("Str Upr SA", "stress", False, True),
    ("STRESS PRONE SA", "stress", False, True),
    ("Dipyridamole SA", "stress", False, True),
    ("Persantine Gated", "stress", True, True),
    ("Dobutamine SA", "stress", False, True),
    ("Stress Summed SA", "stress", False, True),
    ("MPI Stress Transaxials", "stress", False, False),
    ("REST SA", "rest", False, True),
    ("Rest Gated SA", "rest", True, True),
    ("RE SA", "rest", False, True),
    ("RST_TOMO", "rest", False, False),
    ("REST_SA_AC", "rest", False, True),
    ("Rest SA QGS", "rest", False, True),
    ("Rest Transaxials", "rest", False, False),
    ("REDIST SA", "rest", False, True),
    ("Redistribution Tomo", "rest", False, False),
    ("4HR DELAYED SA", "rest", False, True),
    ("Tl201 Rest SA", "rest", False, True),
    ("Rest Summed SA", "rest", False, True),
    ("sa rest irac", "rest", False, True),
    ("Rst Supine SA", "rest", False, True),
    ("REST-GATED-TRANS", "rest", True, False),
    ("SA INTEREST", "unknown", False, True),
    ("Forest SA", "unknown", False, True),
    ("RESTRICTED RECON", "unknown", False, False),
    ("Myocardial Perfusion SA", "unknown", False, True),
    ("STRESS/REST SUMMARY", "unknown", False, True),
)
STRESS = [d for d in DESCRIPTIONS if d[1] == "stress"]
REST = [d for d in DESCRIPTIONS if d[1] == "rest"]


@pytest.fixture(scope="module")
def templates() -> dict[tuple[bool, bool], Dataset]:
    """One NM reconstruction of each kind (gated or summed, short axis or transaxial) to rename."""
    found: dict[tuple[bool, bool], Dataset] = {}
    for short_axis in (True, False):
        study = make_study(demo_spec("none", "tc99m_sestamibi", n_gates=8), np.random.default_rng(5),
                           orientation="short_axis" if short_axis else "transaxial")
        datasets, _ = build_study_datasets(study, key=f"routing-{short_axis}", when=datetime(2026, 1, 2, 3, 4, 5))
        for ds in datasets:
            gated = "RECON GATED TOMO" in list(ds.ImageType)
            found.setdefault((gated, short_axis), ds)
    assert len(found) == 4
    return found


def _named(template: Dataset, description: str, uid_suffix: int, protocol: str | None = None) -> Dataset:
    ds = copy.deepcopy(template)  # Dataset.copy() shares the elements
    ds.SeriesDescription = description
    if protocol is None:
        ds.pop("ProtocolName", None)
    else:
        ds.ProtocolName = protocol
    ds.SeriesInstanceUID = f"{template.SeriesInstanceUID}.{uid_suffix}"
    ds.SOPInstanceUID = f"{template.SOPInstanceUID}.{uid_suffix}"
    return ds


def test_the_table_is_large_and_covers_every_kind() -> None:
    assert len(DESCRIPTIONS) >= 30
    assert {(gated, sa) for _, state, gated, sa in DESCRIPTIONS if state != "unknown"} == {
        (True, True), (True, False), (False, True), (False, False)}
    for required in ("STRS GATED", "ADENO SA", "RE SA", "RST_TOMO", "SA INTEREST"):
        assert required in {d[0] for d in DESCRIPTIONS}


@pytest.mark.parametrize("description,state,gated,short_axis", DESCRIPTIONS, ids=[d[0] for d in DESCRIPTIONS])
def test_routing_and_loading_agree(
    templates: dict[tuple[bool, bool], Dataset], description: str, state: str, gated: bool, short_axis: bool
) -> None:
    ds = _named(templates[(gated, short_axis)], description, 1)
    routed = SeriesSummary.from_attributes(str(ds.SeriesInstanceUID), routing_attributes(ds), 1)
    loaded = load_nm_series(ds)
    assert routed.state == loaded.state == state
    stress_rule, rest_rule = PIPELINE.series_rules
    assert stress_rule.matches(routed) == (state == "stress")
    assert rest_rule.matches(routed) == (state == "rest")


def test_protocol_name_decides_when_the_description_does_not(templates: dict[tuple[bool, bool], Dataset]) -> None:
    ds = _named(templates[(False, True)], "SA", 2, protocol="Myocardial Perfusion Stress")
    assert routing_attributes(ds)["state"] == load_nm_series(ds).state == "stress"
    ds = _named(templates[(False, True)], "REST SA", 3, protocol="Myocardial Perfusion Stress")
    assert routing_attributes(ds)["state"] == load_nm_series(ds).state == "rest"  # the description decides first


def test_studies_so_named_complete_by_the_expected_series_rule(
    tmp_path: Path, templates: dict[tuple[bool, bool], Dataset]
) -> None:
    """Every stress description paired with a rest description, recorded as the listener records them."""
    settings = Settings(data_dir=tmp_path, completeness={
        "default": CompletenessRule(quiet_period_s=600.0, force_deadline_s=3600.0, settle_s=1.0)})
    ledger = Ledger(f"sqlite:///{tmp_path / 'ledger.sqlite'}")
    assembler = Assembler(ledger, settings)
    received = datetime(2026, 1, 2, 3, 4, 5)
    pairs = list(zip(STRESS, REST * 2))
    study_uids = []
    for n, (stress, rest) in enumerate(pairs):
        study_uid = f"2.25.4242.{n}"
        study_uids.append(study_uid)
        datasets = []
        for k, (description, _, gated, short_axis) in enumerate((stress, rest)):
            ds = _named(templates[(gated, short_axis)], description, 100 * n + k)
            ds.StudyInstanceUID = study_uid
            datasets.append(ds)
            assert ledger.instances.record(InstanceMeta(
                str(ds.SOPInstanceUID), str(ds.SOPClassUID), study_uid, str(ds.SeriesInstanceUID),
                f"/spool/{n}/{k}.dcm", 1, routing=routing_attributes(ds), received_at=received))
        # the ledger's summary is the one `cardionode process` builds from the files
        assert ledger.studies.summary(study_uid) == StudySummary.from_datasets(datasets)
    assert assembler.tick(received + timedelta(seconds=2)) == len(pairs)
    for study_uid, (stress, rest) in zip(study_uids, pairs):
        study = ledger.studies.get(study_uid)
        assert study is not None, study_uid
        assert (study.rule, study.pipeline) == ("expected_series", "spect_mpi"), (stress[0], rest[0], study.reason)
    ledger.close()
