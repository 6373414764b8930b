"""python -m nanobrag_torch ARGS: the nanoBragg command line."""
from .cli import main_cli

main_cli()
