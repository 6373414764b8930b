"""Physical constants and unit conversions, exactly as nanoBragg.c uses them."""
import math

R_E_SQR = 7.94079248018965e-30          # Thomson cross section r_e^2 (m^2)
AVOGADRO = 6.02214179e23                 # mol^-1
HC_EV_A = 12398.42                       # lambda[A] = HC_EV_A / E[eV]
DEFAULT_FLUENCE = 125932015286227086360700780544.0   # photons/m^2
WATER_F = 2.57                           # forward structure factor of water
WATER_MW = 18.0                          # g/mol
SOURCE_DISTANCE_M = 10.0                 # only used to place generated sources
# The C converts degrees with value/RTD, RTD = 180*(1/pi); value*pi/180 differs
# in the last bit for about a quarter of inputs.
RTD = 180.0 * (1.0 / math.pi)


def deg_to_rad(x):
    """Degrees to radians as the C does it (x / RTD); works on floats and tensors."""
    return x / RTD
