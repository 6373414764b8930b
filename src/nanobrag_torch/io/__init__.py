"""File formats of nanoBragg: bytes <-> numpy arrays, no physics.

Readers raise ConfigError with a one-line message naming the file (and the
line, as path:N); they read regular files only, within stated limits or in
blocks. Writers write atomically (a temporary file in the same folder, then
os.replace); `OutputSet` (io.outputs) checks all outputs of a run before it
starts and puts them in place together. The *_chunks functions give the bytes
each writer writes, for `Stage.write`.
"""
from nanobrag_torch.io.cnum import c_atof, c_atoi
from nanobrag_torch.io.hkl import (fdump_chunks, read_fdump, read_hkl, read_hkl_with_messages,
                                   write_fdump)
from nanobrag_torch.io.matfile import read_mat
from nanobrag_torch.io.outputs import OutputSet
from nanobrag_torch.io.pgm import pgm_chunks, read_pgm, write_pgm
from nanobrag_torch.io.raw import float_image_chunks, read_float_image, write_float_image
from nanobrag_torch.io.smv import (SMVFile, checked_header_value, header_value, read_smv,
                                   smv_chunks, smv_header_lines, write_smv)
from nanobrag_torch.io.sourcefile import read_sourcefile
from nanobrag_torch.io.stol import read_stol

__all__ = [
    "c_atof", "c_atoi",
    "read_hkl", "read_hkl_with_messages", "write_fdump", "read_fdump", "fdump_chunks",
    "read_mat",
    "OutputSet",
    "read_pgm", "write_pgm", "pgm_chunks",
    "read_float_image", "write_float_image", "float_image_chunks",
    "SMVFile", "header_value", "checked_header_value", "read_smv", "write_smv", "smv_chunks",
    "smv_header_lines",
    "read_sourcefile",
    "read_stol",
]
