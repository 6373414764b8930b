"""python -m nanobrag_torch ARGS: the nanoBragg command line."""
import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
