"""python -m nanobrag_torch ARGS: the nanoBragg command line."""
try:
    from .cli import main_cli
except KeyboardInterrupt:           # Ctrl-C while the command line's modules are imported
    import sys
    sys.stderr.write("nanobrag-torch: interrupted; no files written\n")
    raise SystemExit(130)

main_cli()
