"""Tests of node.dicom: listener, spool, TLS, logs and audit, durability, the vendor corpus, the sender."""
