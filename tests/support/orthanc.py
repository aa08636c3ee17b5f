"""A real PACS for the tests: Debian's Orthanc on loopback ports chosen by the OS, its files in a
temporary folder, stopped by the test that started it (or by the ``orthanc`` fixture)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import requests

from tests.support.ports import free_port, port_open, wait_for

__all__ = ["DICOMWEB_PLUGIN", "ROUTING_LUA", "WORKLISTS_PLUGIN", "Orthanc"]

#: Debian's Orthanc worklists sample plugin (serves the ``.wl`` files of one folder as an MWL SCP)
WORKLISTS_PLUGIN = "/usr/share/orthanc/plugins/libModalityWorklists.so"

#: Debian's orthanc-dicomweb plugin (DICOMweb server and client: QIDO, WADO, STOW)
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

ROUTING_LUA = """
-- forward cardiac source images (never our own results) to the node
function OnStoredInstance(instanceId, tags, metadata, origin)
  local modality = tags['Modality']
  if (modality == 'NM' or modality == 'PT' or modality == 'MR') then
    SendToModality(instanceId, 'cardionode')
  end
end
"""


class Orthanc:
    """Debian's Orthanc on loopback ports, with its storage in ``folder``.

    ``dicomweb_servers``: load the DICOMweb plugin (:data:`DICOMWEB_PLUGIN`) with these remote
    servers (its ``DicomWeb.Servers``: name -> ``{"Url": ..., "Username": ..., "Password": ...}``
    or ``{"Url": ..., "HttpHeaders": {...}}``), to which Orthanc sends with
    ``POST /dicom-web/servers/{name}/stow`` (:meth:`stow`).
    """

    def __init__(self, folder: Path, node_ae: str = "CARDIONODE", node_port: int | None = None,
                 ae_title: str = "ORTHANC", dicomweb_servers: dict[str, dict[str, Any]] | None = None,
                 worklists: Path | None = None) -> None:
        """``worklists``: a folder of ``.wl`` files (:mod:`tests.support.worklist`) that Orthanc's
        worklists plugin (:data:`WORKLISTS_PLUGIN`) serves as a Modality Worklist SCP to any caller."""
        self.folder = folder
        self.worklists = worklists
        self.dicomweb_servers = dicomweb_servers
        self.ae_title = ae_title
        self.dicom_port, self.http_port = free_port(), free_port()
        self.node_ae, self.node_port = node_ae, node_port
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        lua = self.folder / "route.lua"
        lua.write_text(ROUTING_LUA)
        config: dict[str, Any] = {
            "Name": "flowtest-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "index"),
            "DicomAet": self.ae_title,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True,
            "DicomAlwaysAllowFind": True,  # C-FIND from any AE (the results tests query as the node)
            "DicomModalities": {},
            "LuaScripts": [str(lua)],
            "Plugins": [],
            "StableAge": 3600,
            "ConcurrentJobs": 2,
            "DicomAssociationCloseDelay": 0,
        }
        if self.node_port is not None:
            config["DicomModalities"]["cardionode"] = [self.node_ae, "127.0.0.1", self.node_port]
        if self.dicomweb_servers is not None:
            config["Plugins"] = [DICOMWEB_PLUGIN]
            config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "Servers": self.dicomweb_servers}
        if self.worklists is not None:
            config["Plugins"] = [*config["Plugins"], WORKLISTS_PLUGIN]
            config["Worklists"] = {"Enable": True, "Database": str(self.worklists)}
            config["DicomAlwaysAllowFindWorklist"] = True
        (self.folder / "orthanc.json").write_text(json.dumps(config, indent=2))
        log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen(["/usr/sbin/Orthanc", str(self.folder / "orthanc.json")],
                                        stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._alive, 30, "Orthanc's REST API")
        wait_for(lambda: port_open(self.dicom_port), 10, "Orthanc's DICOM port")
        return self

    def _alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"Orthanc exited: {(self.folder / 'orthanc.log').read_text()[-2000:]}")
        try:
            return requests.get(f"{self.url}/system", timeout=1).ok
        except requests.RequestException:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def upload(self, paths: list[Path]) -> list[str]:
        """Store DICOM files through the REST API (``POST /instances``); Orthanc's ids of their studies."""
        studies = []
        for path in paths:
            answer = requests.post(f"{self.url}/instances", data=path.read_bytes(), timeout=30)
            answer.raise_for_status()
            studies.append(answer.json()["ParentStudy"])
        return sorted(set(studies))

    def stow(self, server: str, resources: list[str]) -> requests.Response:
        """Ask Orthanc to send ``resources`` (its ids of studies, series or instances) to the DICOMweb
        server ``server`` with STOW-RS (needs ``dicomweb_servers``); its answer."""
        return requests.post(f"{self.url}/dicom-web/servers/{server}/stow", json={"Resources": resources}, timeout=120)

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Every instance of the study, as ``{"modality", "sop_class", "sop_instance_uid", ...}``."""
        found = requests.post(f"{self.url}/tools/find", timeout=10,
                              json={"Level": "Study", "Query": {"StudyInstanceUID": study_uid}}).json()
        if not found:
            return []
        out = []
        for series in requests.get(f"{self.url}/studies/{found[0]}/series", timeout=10).json():
            modality = series["MainDicomTags"].get("Modality", "")
            for instance_id in series["Instances"]:
                tags = requests.get(f"{self.url}/instances/{instance_id}/simplified-tags", timeout=10).json()
                out.append({"modality": modality, "sop_class": tags.get("SOPClassUID", ""),
                            "sop_instance_uid": tags.get("SOPInstanceUID", ""), "id": instance_id,
                            "series_uid": tags.get("SeriesInstanceUID", "")})
        return out

    def tags(self, instance_id: str) -> dict[str, Any]:
        """The instance's tags in Orthanc's simplified JSON form."""
        return requests.get(f"{self.url}/instances/{instance_id}/simplified-tags", timeout=10).json()

    def instance_ids(self) -> list[str]:
        """Orthanc's ids of every stored instance."""
        return requests.get(f"{self.url}/instances", timeout=10).json()

    def instance_id(self, sop_instance_uid: str) -> str:
        """Orthanc's id of the instance with ``sop_instance_uid`` (exactly one must exist)."""
        found = requests.post(f"{self.url}/tools/lookup", data=sop_instance_uid, timeout=10).json()
        ids = [f["ID"] for f in found if f["Type"] == "Instance"]
        assert len(ids) == 1, found
        return ids[0]

    def instance_file(self, instance_id: str) -> bytes:
        """The stored DICOM file of an instance."""
        return requests.get(f"{self.url}/instances/{instance_id}/file", timeout=30).content

    def results(self, study_uid: str) -> list[dict[str, Any]]:
        """The node's result objects in Orthanc (modality SR or OT)."""
        return [i for i in self.study_instances(study_uid) if i["modality"] in ("SR", "OT")]
