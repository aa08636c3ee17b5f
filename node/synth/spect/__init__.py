"""Digital SPECT MPI phantoms and synthetic NM DICOM studies with exact ground truth (research use only)."""
