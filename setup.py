"""Which files the ``cardionode`` distribution installs (the rest of the build is in pyproject.toml).

* ``node`` and its sub-packages, with their data files (``py.typed``, ``*.json``, ``*.toml``, ``*.npz``:
  the normal limits in ``node/quant/data/``);
* the top-level folders ``models/`` (MONAI bundles) and ``dicom_templates/`` (output
  templates) as the data packages ``node.models`` and ``node.dicom_templates``, every file
  in them: a wheel holds them at ``site-packages/node/models/`` and
  ``site-packages/node/dicom_templates/``, and an editable install maps those names back to
  the repository folders. :mod:`node.resources` finds them, either way.

This needs a ``setup.py`` because pyproject.toml cannot both discover the ``node``
packages and add packages that live in other folders.
"""

from setuptools import find_namespace_packages, setup

#: data package -> repository folder that holds it
DATA_PACKAGES = {"node.models": "models", "node.dicom_templates": "dicom_templates"}
_NOT_PACKAGES = ["*__pycache__"]


def _data_packages(package: str, folder: str) -> list[str]:
    """``package`` and one package name per sub-folder of ``folder`` (each bundle's configs/, models/, docs/)."""
    return [package] + [f"{package}.{sub}" for sub in find_namespace_packages(where=folder, exclude=_NOT_PACKAGES)]


_data = [name for package, folder in DATA_PACKAGES.items() for name in _data_packages(package, folder)]

setup(
    packages=find_namespace_packages(include=["node", "node.*"], exclude=_NOT_PACKAGES) + _data,
    package_dir=DATA_PACKAGES,
    package_data={"node": ["py.typed", "**/*.json", "**/*.toml", "**/*.npz"], **{name: ["*"] for name in _data}},
)
