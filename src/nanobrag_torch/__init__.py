"""nanobrag-torch: a vectorised, differentiable PyTorch re-implementation of nanoBragg.c.

    import nanobrag_torch as nb
    cfg = nb.config_from_args(["-cell", "100", "100", "100", "90", "90", "90",
                               "-default_F", "100", "-N", "5", "-lambda", "6.2",
                               "-detpixels", "256"])
    image = nb.simulate(cfg)            # an Image; image.pixels: (spixels, fpixels) photons
    nb.write_smv("image.img", image)    # the command line's files, from Python
"""
from .cli import config_from_args
from .config import (AmorphousLayer, BackgroundConfig, BeamConfig, CrystalConfig, DetectorConfig,
                     HKLData, OutputConfig, ResponseConfig, SimConfig, SourceList, from_dict, to_dict)
from .errors import (ConfigConflictError, ConfigError, ConfigTypeError, ConfigValueError,
                     UsageError)
from .image import Image, Stats
from .io.sf import structure_factors
from .modes import C_PARITY, SPEC, Mode
from .simulator import Simulator, SuspiciousValueWarning, simulate
from .sweep import sweep, sweep_path
from .shots import shot_path, shots
from .labels import spot_labels, write_labels
from .validate import validate
from . import writers
from .writers import (noise_counts, write_cbf, write_float, write_nexus, write_noise, write_pgm,
                      write_png, write_smv)

__all__ = ["config_from_args", "simulate", "Simulator", "Image", "Stats", "SimConfig",
           "CrystalConfig", "DetectorConfig", "BeamConfig", "BackgroundConfig", "OutputConfig",
           "AmorphousLayer", "ResponseConfig",
           "HKLData", "SourceList", "to_dict", "from_dict", "validate", "Mode", "SPEC",
           "C_PARITY", "write_float", "write_smv", "write_pgm", "write_noise", "noise_counts", "write_cbf",
           "write_nexus", "write_png",
           "ConfigError", "ConfigValueError", "ConfigTypeError", "ConfigConflictError",
           "UsageError", "SuspiciousValueWarning", "structure_factors", "sweep", "sweep_path", "shots", "shot_path",
           "spot_labels", "write_labels"]
__version__ = "0.1.0"
