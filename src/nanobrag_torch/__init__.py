"""nanobrag-torch: a vectorised, differentiable PyTorch re-implementation of nanoBragg.c.

    import nanobrag_torch as nb
    cfg = nb.config_from_args(["-cell", "100", "100", "100", "90", "90", "90",
                               "-default_F", "100", "-N", "5", "-lambda", "6.2",
                               "-detpixels", "256"])
    image = nb.Simulator(cfg).run()      # (spixels, fpixels) photons per pixel
"""
from .cli import config_from_args
from .config import (BackgroundConfig, BeamConfig, CrystalConfig, DetectorConfig, HKLData,
                     OutputConfig, SimConfig, SourceList)
from .errors import ConfigError, UsageError
from .io.sf import structure_factors
from .simulator import Simulator

__all__ = ["config_from_args", "Simulator", "SimConfig", "CrystalConfig", "DetectorConfig",
           "BeamConfig", "BackgroundConfig", "OutputConfig", "HKLData", "SourceList",
           "ConfigError", "UsageError", "structure_factors"]
__version__ = "0.1.0"
