"""File formats of nanoBragg: bytes <-> numpy arrays, no physics.

Readers raise ConfigError with a one-line message naming the file (and the
line, as path:N); they read regular files only, within stated limits or in
blocks. Writers write atomically (a temporary file beside the target, then
os.replace); inside `OutputSet.staged()` (io.outputs) they write into the
run's staged transaction instead, which checks all outputs of a run before it
starts and puts them in place together. MTZ/mmCIF/model readers and the
CBF/NeXus/PNG writers import their optional packages (the [formats] extra)
only when called.
"""
from nanobrag_torch.io.cbf import write_cbf
from nanobrag_torch.io.cnum import c_atof, c_atoi
from nanobrag_torch.io.experiment import Experiment
from nanobrag_torch.io.detector_json import read_detector_json, write_detector_json
from nanobrag_torch.io.expt import read_experiments, read_expt, write_expt
from nanobrag_torch.io.hkl import (fdump_chunks, read_fdump, read_hkl, read_hkl_with_messages,
                                   write_fdump)
from nanobrag_torch.io.matfile import read_mat
from nanobrag_torch.io.nexus import write_nexus
from nanobrag_torch.io.outputs import OutputSet
from nanobrag_torch.io.pgm import pgm_chunks, read_pgm, write_pgm
from nanobrag_torch.io.png import write_png
from nanobrag_torch.io.raw import (float_image_chunks, read_float_image, read_float_values,
                                   write_float_image)
from nanobrag_torch.io.sf import structure_factors
from nanobrag_torch.io.smv import (SMVFile, checked_header_value, format_header, header_value,
                                   read_smv, smv_chunks, smv_header_lines, write_smv,
                                   write_smv_bytes)
from nanobrag_torch.io.sourcefile import read_sourcefile
from nanobrag_torch.io.stol import read_stol, write_stol_rows

__all__ = [
    "c_atof", "c_atoi",
    "read_hkl", "read_hkl_with_messages", "write_fdump", "read_fdump", "fdump_chunks",
    "read_mat",
    "OutputSet",
    "read_pgm", "write_pgm", "pgm_chunks",
    "read_float_image", "read_float_values", "write_float_image", "float_image_chunks",
    "SMVFile", "header_value", "checked_header_value", "read_smv", "write_smv", "smv_chunks",
    "write_smv_bytes", "format_header",
    "smv_header_lines",
    "read_sourcefile",
    "read_stol", "write_stol_rows",
    "structure_factors", "Experiment", "write_cbf", "write_nexus", "write_png",
    "read_expt", "read_experiments", "write_expt",
    "read_detector_json", "write_detector_json",
]
