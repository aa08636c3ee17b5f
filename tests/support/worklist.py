"""Modality worklists for the tests: cardiac scheduled procedure steps as dcmtk ``.wl`` files, served by
dcmtk ``wlmscpfs`` or by Orthanc's worklists plugin (:class:`tests.support.orthanc.Orthanc` with
``worklists=``), both on loopback ports chosen by the OS.

The scenarios (:func:`one_day_mpi`, :func:`two_day_mpi`) are SPECT myocardial perfusion orders as a
RIS schedules them (``/work/shared/reference/workflow.md`` section 2.3):

* one-day: one order (one accession, one requested procedure), two scheduled steps on the same day,
  rest then stress (regadenoson), Tc-99m sestamibi;
* two-day: two orders of one patient on consecutive days, rest on day 1 and stress on day 2,
  each with its own accession.

Each ``.wl`` file is one scheduled step, written with dcmtk ``dump2dcm -g`` from a dump text (the format
of ``/usr/share/doc/dcmtk/examples/wlistdb/OFFIS/*.dump``). Patient identity is synthetic; tests check that
the node keeps none of it but the clinical facts.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path

from tests.support.ports import free_port, port_open, wait_for

__all__ = [
    "WORKLIST_AE",
    "Order",
    "Step",
    "WlmScp",
    "one_day_mpi",
    "two_day_mpi",
    "write_worklist",
]

#: the called AE title of the test worklists (wlmscpfs: the sub-folder of its data path)
WORKLIST_AE = "CARDIOWL"


@dataclass(frozen=True)
class Step:
    """One scheduled procedure step: ``state_words`` is its description, ``code`` its protocol code value."""

    sps_id: str
    day: date
    time: str
    description: str
    code: str
    code_meaning: str
    modality: str = "NM"
    station_ae: str = "GAMMACAM1"


@dataclass(frozen=True)
class Order:
    """One requested procedure of a patient with its scheduled steps (one ``.wl`` file per step)."""

    accession: str
    requested_procedure_id: str
    study_uid: str
    patient_id: str
    steps: tuple[Step, ...]
    patient_name: str = "Wormwood^Perpetua"
    birth_date: str = "19610415"
    sex: str = "F"
    height_m: str = "1.64"
    weight_kg: str = "71.5"
    issuer: str = "HOSP-A"
    procedure: str = "NM MPI SPECT stress/rest Tc99m sestamibi"
    procedure_code: str = "MPI-SR"
    reason: str = "Chest pain on exertion, rule out ischaemia"
    extra: dict[str, str] = field(default_factory=dict)

    def dump(self, step: Step) -> str:
        """The dcmtk dump text of one step of this order."""
        return "\n".join([
            "(0008,0005) CS [ISO_IR 100]",
            f"(0008,0050) SH [{self.accession}]",
            f"(0010,0010) PN [{self.patient_name}]",
            f"(0010,0020) LO [{self.patient_id}]",
            f"(0010,0021) LO [{self.issuer}]",
            f"(0010,0030) DA [{self.birth_date}]",
            f"(0010,0040) CS [{self.sex}]",
            f"(0010,1020) DS [{self.height_m}]",
            f"(0010,1030) DS [{self.weight_kg}]",
            f"(0020,000d) UI [{self.study_uid}]",
            "(0032,1032) PN [Referrer^Rhoda]",
            f"(0032,1060) LO [{self.procedure}]",
            "(0032,1064) SQ",
            "(fffe,e000) -",
            f"(0008,0100) SH [{self.procedure_code}]",
            "(0008,0102) SH [99LOCAL]",
            f"(0008,0104) LO [{self.procedure}]",
            "(fffe,e00d) -",
            "(fffe,e0dd) -",
            "(0040,0100) SQ",
            "(fffe,e000) -",
            f"(0008,0060) CS [{step.modality}]",
            f"(0040,0001) AE [{step.station_ae}]",
            f"(0040,0002) DA [{step.day:%Y%m%d}]",
            f"(0040,0003) TM [{step.time}]",
            "(0040,0006) PN [Tech^Tamsin]",
            f"(0040,0007) LO [{step.description}]",
            "(0040,0008) SQ",
            "(fffe,e000) -",
            f"(0008,0100) SH [{step.code}]",
            "(0008,0102) SH [99LOCAL]",
            f"(0008,0104) LO [{step.code_meaning}]",
            "(fffe,e00d) -",
            "(fffe,e0dd) -",
            f"(0040,0009) SH [{step.sps_id}]",
            "(0040,0010) SH [NMROOM1]",
            "(0040,0011) SH [NUCLEAR MEDICINE]",
            "(fffe,e00d) -",
            "(fffe,e0dd) -",
            f"(0040,1001) SH [{self.requested_procedure_id}]",
            f"(0040,1002) LO [{self.reason}]",
            "(0040,1003) SH [MEDIUM]",
        ]) + "\n"


def one_day_mpi(day: date, *, patient_id: str = "MPI0001", accession: str = "ACC1D0001",
                study_uid: str = "1.2.826.0.1.3680043.10.1234.1001") -> list[Order]:
    """A one-day SPECT MPI order: rest at 08:00 and regadenoson stress at 10:30, one accession."""
    return [Order(accession, "RP1001", study_uid, patient_id, (
        Step("SPS1001R", day, "080000", "Rest Tc99m sestamibi", "MPI-REST", "Myocardial perfusion rest"),
        Step("SPS1001S", day, "103000", "Stress (regadenoson) Tc99m sestamibi", "MPI-STRESS",
             "Myocardial perfusion stress, pharmacological"),
    ), sex="M", height_m="1.78", weight_kg="92", birth_date="19650312",
        procedure="NM MPI SPECT stress/rest 1-day Tc99m sestamibi", procedure_code="MPI-SR-1D")]


def two_day_mpi(day: date, *, patient_id: str = "MPI0002") -> list[Order]:
    """A two-day SPECT MPI protocol: a rest order on ``day`` and a stress order the day after."""
    common = {"patient_id": patient_id, "sex": "F", "height_m": "1.64", "weight_kg": "71.5", "birth_date": "19580101",
              "procedure_code": "MPI-SR-2D"}
    return [
        Order("ACC2D0001", "RP2001", "1.2.826.0.1.3680043.10.1234.2001", steps=(
            Step("SPS2001R", day, "090000", "Rest Tc99m tetrofosmin (day 1 of 2)", "MPI-REST",
                 "Myocardial perfusion rest"),), procedure="NM MPI SPECT 2-day rest Tc99m tetrofosmin", **common),
        Order("ACC2D0002", "RP2002", "1.2.826.0.1.3680043.10.1234.2002", steps=(
            Step("SPS2002S", day + timedelta(days=1), "090000", "Exercise stress Tc99m tetrofosmin (day 2 of 2)",
                 "MPI-STRESS", "Myocardial perfusion stress, exercise"),),
              procedure="NM MPI SPECT 2-day stress Tc99m tetrofosmin", **common),
    ]


def write_worklist(folder: Path, orders: list[Order]) -> list[Path]:
    """One ``.wl`` file per scheduled step of ``orders`` in ``folder`` (created; a ``lockfile`` beside them,
    which wlmscpfs needs), made by dcmtk ``dump2dcm -g``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lockfile").touch()
    written = []
    for order in orders:
        for step in order.steps:
            dump = folder / f"{step.sps_id}.dump"
            dump.write_text(order.dump(step))
            target = folder / f"{step.sps_id}.wl"
            subprocess.run(["dump2dcm", "-g", str(dump), str(target)], check=True, capture_output=True, timeout=30)
            dump.unlink()
            written.append(target)
    return written


class WlmScp:
    """dcmtk ``wlmscpfs`` serving the ``.wl`` files of ``root/<ae_title>`` on a free port.

    wlmscpfs 3.6.7 listens on every interface (no bind option); the tests address it on 127.0.0.1.
    """

    def __init__(self, root: Path, ae_title: str = WORKLIST_AE) -> None:
        self.root = root
        self.ae_title = ae_title
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def folder(self) -> Path:
        """Where the ``.wl`` files of this AE title go."""
        return self.root / self.ae_title

    def start(self) -> WlmScp:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / "lockfile").touch()
        log = open(self.root / "wlmscpfs.log", "wb")
        self.process = subprocess.Popen(["wlmscpfs", "-dfp", str(self.root), str(self.port)],
                                        stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._alive, 20, "wlmscpfs")
        return self

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"wlmscpfs exited: {(self.root / 'wlmscpfs.log').read_text()[-2000:]}")
        return port_open(self.port)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
