"""End to end on real components: Orthanc, dcmtk, ``cardionode serve``, Redis, the docker files."""
