"""DICOM to volumes with patient geometry: NM reconstructions (:mod:`node.imaging.nm`), volumes, radiopharmaceutical codes."""
