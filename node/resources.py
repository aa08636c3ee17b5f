"""Where the data shipped with CardioNode is found: the one lookup rule.

The repository keeps two data folders at its top level:

* ``models/``: the MONAI bundles (:mod:`node.ai.bundles`);
* ``dicom_templates/``: the declarative output templates (:mod:`node.results.templates`).

The build (``setup.py``) installs them as the *data packages* ``node.models`` and
``node.dicom_templates``: a wheel holds them at ``site-packages/node/models/`` and
``site-packages/node/dicom_templates/``, and an editable install (``pip install -e .``)
maps the same package names back to the repository folders. Each folder has an
``__init__.py`` (a docstring only) so that both kinds of install resolve it through the
import system; :func:`package_folder` asks ``importlib.resources`` and nothing else: no
environment variable, no path relative to this file.

These are the *defaults*. The settings ``models_dir`` and ``templates_dir``
(:class:`node.config.Settings`) replace them; the node sends the chosen folders to its
workers in each step message (:class:`node.pipelines.options.RunConfig`,
:class:`node.results.content.ReportContext`).

The synthetic normal limits are package data of :mod:`node.quant` (``node/quant/data/``),
found beside their module; they are part of the method, not a site choice.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

__all__ = ["MODELS_PACKAGE", "TEMPLATES_PACKAGE", "default_models_dir", "default_templates_dir", "package_folder"]

#: data package of the MONAI bundles (the repository's ``models/``)
MODELS_PACKAGE = "node.models"
#: data package of the output templates (the repository's ``dicom_templates/``)
TEMPLATES_PACKAGE = "node.dicom_templates"


def package_folder(package: str) -> Path:
    """The folder of the installed data package ``package`` (e.g. ``"node.models"``).

    Raises ``FileNotFoundError`` when the package is not installed, or is installed in
    a form that has no folder on disk (a zip file).
    """
    try:
        folder = importlib.resources.files(package)
    except ModuleNotFoundError as exc:
        raise FileNotFoundError(
            f"the data package {package} is not installed; reinstall cardionode (pip install . or pip install -e .)"
        ) from exc
    if not isinstance(folder, Path):
        raise FileNotFoundError(f"the data package {package} is not a folder on disk ({folder!r})")
    return folder


def default_models_dir() -> Path:
    """The folder of the MONAI bundles shipped with the package (one sub-folder per bundle)."""
    return package_folder(MODELS_PACKAGE)


def default_templates_dir() -> Path:
    """The folder of the output templates shipped with the package (``*.toml``)."""
    return package_folder(TEMPLATES_PACKAGE)
