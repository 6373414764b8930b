"""The two modes and the rules in which they differ, one rule per row of docs/modes.md.

spec (default) follows nanoBragg.c except where the C contradicts the user's explicit
request or the physics; c-parity reproduces the single-threaded C bit for bit, bugs
included. Code asks the mode for a rule by name (`mode.source_weights`), never
compares mode names; `ROWS` maps every row of docs/modes.md to its rule (a test
checks that the two agree).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from .errors import ConfigValueError

MODES = ("spec", "c-parity")


@dataclass(frozen=True)
class Mode:
    """A mode's answer to each rule (True: the physical / requested behaviour)."""
    name: str
    fresh_phi_rotation: bool        # every phi step rotates the phi=0 cell (no C-PARITY-001 carryover)
    explicit_pivot: bool            # an explicit -pivot wins over the convention's pivot
    pix0_vector: bool               # -pix0_vector(_mm) places the first pixel (the C ignores it)
    argv_as_given: bool             # -twotheta_axis and -misset_seed mean only themselves
    source_weights: bool            # -sourcefile weights weight the sources
    strict_source_file: bool        # a source-file line that is not numbers is an error
    strict_hkl_lines: bool          # one reflection per HKL line (not the C's 4-number stream)
    fdump_exact_separator: bool     # Fdump.bin: skip exactly the "\n\f" after the header
    torch_noise: bool               # noise image from torch's Poisson generator (not the C's stream)
    reduced_lattice_form: bool      # sin(N pi (h-h0)) / sin(pi (h-h0)) (not the C's sin(N pi h) / sin(pi h))
    smooth_mosaic_angles: bool      # domain angles in the run's dtype (the C rounds them to float32)
    smv_adc_offset: bool            # SMV headers carry ADC_OFFSET and a HEADER_BYTES that holds them
    strict_stol_table: bool         # a -stol line that is not two numbers, or a falling abscissa, is an error
    physical_water: bool            # -water: molecules r_e^2 fluence F(stol)^2 omega polar, no 1/steps
    subpixel_factors: bool          # -oversample_*: each subpixel's factor multiplies its own terms
    suite_spec_stages: bool         # -amorphous layers and the detector response: nonbragg/noisify's spec rules
    port_spellings_kept: bool       # port-only words containing a C pattern keep the port's meaning

    @property
    def c_parity(self) -> bool:
        return self.name == "c-parity"

    def __str__(self) -> str:
        return self.name


SPEC = Mode("spec", *([True] * (len(fields(Mode)) - 1)))
C_PARITY = Mode("c-parity", *([False] * (len(fields(Mode)) - 1)))

# docs/modes.md row number -> the rule that implements it
ROWS = {
    1: "fresh_phi_rotation",
    2: "explicit_pivot",
    3: "pix0_vector",
    4: "pix0_vector",
    5: "argv_as_given",
    6: "argv_as_given",
    7: "source_weights",
    8: "strict_source_file",
    9: "strict_hkl_lines",
    10: "fdump_exact_separator",
    11: "torch_noise",
    12: "reduced_lattice_form",
    13: "smooth_mosaic_angles",
    14: "smv_adc_offset",
    15: "strict_stol_table",
    16: "physical_water",
    17: "subpixel_factors",
    18: "suite_spec_stages",
    19: "port_spellings_kept",
}


def get_mode(mode) -> Mode:
    """A Mode from its name ("spec" | "c-parity") or a Mode."""
    if isinstance(mode, Mode):
        return mode
    if mode == "spec":
        return SPEC
    if mode == "c-parity":
        return C_PARITY
    raise ConfigValueError("mode", f"must be one of {', '.join(MODES)}, got {mode!r}")
