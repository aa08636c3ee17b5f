"""DICOM networking and storage, no medicine.

Modules (import them by name; this face imports none of them, so that a worker
that needs only the spool or the audit log does not load pynetdicom and the ledger):

* :mod:`node.dicom.scp`: the listener: association policy, the AE, start and stop,
  association events (:class:`~node.dicom.scp.DicomListener`);
* :mod:`node.dicom.services`: how a DICOM service plugs into the listener (presentation
  contexts and ``(event, handler)`` pairs), the node's implementation identity, and
  Verification (C-ECHO);
* :mod:`node.dicom.storage`: the Storage SCP service (C-STORE checks and statuses,
  spooling, recording, rejections);
* :mod:`node.dicom.intake`: receiving a data set within bounds (to disk as it arrives,
  bounded inflation, structure walk before parsing, the in-flight memory budget);
* :mod:`node.dicom.sender`: the C-STORE SCU and the export loop over the ledger's sends;
* :mod:`node.dicom.spool`: atomic, fsync'ed files (spool, outbox);
* :mod:`node.dicom.journal`: the spool journal (received instances made durable by one
  ``fdatasync`` shared by concurrent associations, replayed after a crash);
* :mod:`node.dicom.tls`: TLS contexts for the listener and the sender;
* :mod:`node.dicom.worklist_scu`: the Modality Worklist C-FIND SCU (keys in, scheduled steps out);
* :mod:`node.dicom.logs` and :mod:`node.dicom.audit`: logging without patient data,
  and the append-only audit log.

Nothing here imports :mod:`node.pipelines`, :mod:`node.results` or any other
medical package: what needs them (routing attributes of a stored instance, the
Enhanced SR fallback of the sender) is passed in as a callable by the
composition root, :mod:`node.service`.
"""

#: the package's modules (this face imports none of them: import the one you need)
__all__ = [
    "audit",
    "intake",
    "journal",
    "logs",
    "scp",
    "sender",
    "services",
    "spool",
    "storage",
    "tls",
    "worklist_scu",
]
