"""Optional dependencies of the file formats, imported only when a format is used.

A missing package gives one line naming the package, the format that needs it
and the extra that installs it, as a ConfigError (the command line prints it
and exits; nothing has been written yet).
"""
from __future__ import annotations

import importlib

from nanobrag_torch.errors import ConfigError

EXTRA = "formats"

# module name -> (PyPI name, what needs it)
PACKAGES = {
    "gemmi": ("gemmi", "reading MTZ, mmCIF and atomic models"),
    "fabio": ("fabio", "writing CBF images"),
    "h5py": ("h5py", "writing NeXus images"),
    "hdf5plugin": ("hdf5plugin", "Bitshuffle/LZ4 compression of NeXus images"),
    "PIL": ("pillow", "writing PNG previews"),
    "dask": ("dask[distributed]", "rendering a batch on Dask workers (-workers, -scheduler)"),
}
EXTRAS = {"dask": "cluster"}      # packages of another extra than EXTRA


class MissingDependency(ConfigError):
    """An optional package is not installed."""


def require(module: str):
    """Import an optional module (e.g. "fabio.cbfimage"), or raise MissingDependency
    naming the package and the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        top = module.split(".")[0]
        pip_name, purpose = PACKAGES.get(top, (top, "this feature"))
        raise MissingDependency(
            f"{purpose} needs the Python package '{pip_name}', which is not installed: "
            f"pip install 'nanobrag-torch[{EXTRAS.get(top, EXTRA)}]'") from None
