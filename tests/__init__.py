"""CardioNode's tests: one package per node package, plus tests/support (the one harness) and tests/e2e."""
