#!/usr/bin/env bash
# Developer entry points: ./dev.sh demo | test | setup | install
#   setup: install, then build the compiled kernels of everyday runs (nanobrag-torch -warmup:
#          once per machine, about 4 minutes on 2 cores (248 s, 2026-12-04); a no-op once done)
#   demo:  install, then render a demo image into demo_out/ (float, SMV, noise SMV and PGM files)
#   test:  setup, then run the test suite (includes the nanoBragg.c parity corpus in ../shared/golden)
# install: .venv with the CPU build of PyTorch and the package (editable) with the test,
#          formats and cluster extras (gemmi, fabio, h5py, hdf5plugin, pillow; dask[distributed];
#          nxmx for the tests)
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

install() {
    if [ ! -x .venv/bin/python ]; then
        "$PY" -m venv .venv
    fi
    # pin the CPU build: a bare "torch" requirement would pull a multi-GB CUDA build
    .venv/bin/python -m pip install -q --disable-pip-version-check torch==2.13.0
    .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,formats,cluster]'
}

setup() {
    install
    .venv/bin/nanobrag-torch -warmup
}

case "${1:-}" in
    install)
        install ;;
    setup)
        setup ;;
    demo)
        install
        mkdir -p demo_out
        .venv/bin/nanobrag-torch -cell 70 80 90 75 85 95 -misset 10 20 30 -default_F 100 -N 10 \
            -lambda 1.0 -distance 100 -pixel 0.1 -detpixels 512 -water 0.1 -seed 1 \
            -floatfile demo_out/float.bin -intfile demo_out/image.img \
            -noisefile demo_out/noise.img -pgmfile demo_out/image.pgm
        ls -l demo_out ;;
    test)
        setup
        shift
        .venv/bin/python -m pytest -q "$@" ;;
    *)
        echo "usage: ./dev.sh demo | test [pytest args] | setup | install" >&2
        exit 2 ;;
esac
