"""The build backend: setuptools' own, with one notice of its editable install silenced.

memlora maps three folders into one namespace (`memlora/`, `export/` -> `memlora.export`, `runtime_py/` ->
`memlora.runtime`), which only setuptools' meta-path finder can install editable; setuptools then always
ends `pip install -e .` with an "Editable installation" InformationOnly notice (folders named like the
package may shadow it), which does not apply to this layout. Everything else -- every real warning, and
every other hook -- is setuptools' unchanged.
"""

from __future__ import annotations

import warnings

from setuptools import build_meta
from setuptools.build_meta import *  # noqa: F401,F403  (the PEP 517/660 hooks, unchanged)
from setuptools.warnings import InformationOnly


def build_editable(wheel_directory, config_settings=None, metadata_directory=None):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Editable installation", category=InformationOnly)
        return build_meta.build_editable(wheel_directory, config_settings, metadata_directory)
