"""File formats of nanoBragg: bytes <-> numpy arrays, no physics.

Readers raise ConfigError with a one-line message naming the file; writers
write atomically (a temporary file in the same folder, then os.replace).
MTZ/mmCIF/model readers and the CBF/NeXus/PNG writers import their optional
packages (the [formats] extra) only when called.
"""
from nanobrag_torch.io.cbf import write_cbf
from nanobrag_torch.io.cnum import c_atof, c_atoi
from nanobrag_torch.io.experiment import Experiment
from nanobrag_torch.io.detector_json import read_detector_json, write_detector_json
from nanobrag_torch.io.expt import read_experiments, read_expt, write_expt
from nanobrag_torch.io.hkl import read_fdump, read_hkl, read_hkl_with_messages, write_fdump
from nanobrag_torch.io.matfile import read_mat
from nanobrag_torch.io.nexus import write_nexus
from nanobrag_torch.io.pgm import read_pgm, write_pgm
from nanobrag_torch.io.png import write_png
from nanobrag_torch.io.raw import read_float_image, read_float_values, write_float_image
from nanobrag_torch.io.sf import structure_factors
from nanobrag_torch.io.smv import (SMVFile, format_header, header_value, read_smv, smv_header_lines,
                                   write_smv, write_smv_bytes)
from nanobrag_torch.io.sourcefile import read_sourcefile
from nanobrag_torch.io.stol import read_stol, write_stol_rows

__all__ = [
    "c_atof", "c_atoi",
    "read_hkl", "read_hkl_with_messages", "write_fdump", "read_fdump",
    "read_mat",
    "read_pgm", "write_pgm",
    "read_float_image", "read_float_values", "write_float_image",
    "SMVFile", "header_value", "read_smv", "write_smv", "write_smv_bytes", "format_header",
    "smv_header_lines",
    "read_sourcefile",
    "read_stol", "write_stol_rows",
    "structure_factors", "Experiment", "write_cbf", "write_nexus", "write_png",
    "read_expt", "read_experiments", "write_expt",
    "read_detector_json", "write_detector_json",
]
