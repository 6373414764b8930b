"""floatadd-torch: sum float images (spots + water + air ...), as upstream's float_add.

    floatadd-torch spots.bin water.bin sum.bin              # upstream's form: in1 in2 [out]
    floatadd-torch -outfile sum.bin spots.bin water.bin air.bin -scale3 0.5
    python -m nanobrag_torch.floatadd ...

Upstream: float_add is not in bl831/nanoBragg but in bl831/bin_stuff (float_add.c,
"add two binary float files together - report on resulting stats", 3-29-24; the
nanoBragg README links it).  It reads two files of 4-byte floats (after
-header BYTES, file 1's header copied to the output), writes
    out = outscale * (scale1 * (f1 - offset) + scale2 * (f2 - offset)) + outoffset
as floats (default output.bin; a third file name is the output) and prints
statistics (max, min, mean, rms, rmsd, skewness, kurtosis, least-squares
scale, correlation).  Its -offset also sets -outoffset; -normalize (relative
difference), -histogram, -ignore, -reject and -epsilon select further modes.

This port keeps the arithmetic, the flags -scale1 -scale2 -offset -outoffset
-outscale -header -outfile/-output and the upstream file order, and differs
where upstream misleads: any number of inputs (with -outfile every file named
is an input; -scaleK scales the K-th), sizes must match (upstream reads the
second file with the first one's size: silently truncated or zero-padded),
a single input gets no phantom second image (upstream subtracts scale2*offset
from a zero image), and it prints pixels, max, min, mean, rms and rmsd only.
The statistical modes are not ported (they are not image addition).
"""
from __future__ import annotations

import math
import re
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from .cli import FILE, NONNEG_INT, NUM
from .errors import ConfigError, UsageError
from .flags import FileError, FlagError, Parser, run_main, table
from .flags import main_cli as flags_main_cli
from .io.outputs import OutputSet
from .io._common import atomic_write, read_bytes
from .io.raw import FLOAT_IMAGE_LIMIT
from .io.cnum import fmt_g

PROG = "floatadd-torch"


def float_add(images: Sequence, scales: Optional[Sequence] = None, offset=0.0, outscale=1.0, outoffset=0.0):
    """outscale * sum_k scales[k] * (images[k] - offset) + outoffset, in upstream's order.

    images: arrays or tensors of one shape (ConfigError otherwise); scales default
    to 1.  Tensors in (any of them): a tensor out, differentiable in images,
    scales, offset and the output scale and offset; arrays in: a float64 array.
    """
    images = list(images)
    if not images:
        raise ConfigError("float_add: no images")
    shapes = {tuple(np.shape(x)) for x in images}
    if len(shapes) != 1:
        raise ConfigError(f"float_add: images differ in size: {' vs '.join(str(s) for s in shapes)}")
    scales = [1.0] * len(images) if scales is None else list(scales)
    if len(scales) != len(images):
        raise ConfigError(f"float_add: {len(scales)} scales for {len(images)} images")
    use_torch = any(isinstance(x, torch.Tensor) for x in images + scales + [offset, outscale, outoffset])
    conv = (lambda x: x.to(torch.float64) if isinstance(x, torch.Tensor)
            else torch.as_tensor(x, dtype=torch.float64)) if use_torch else (lambda x: np.asarray(x, np.float64))
    total = None
    for img, s in zip(images, scales):
        term = s * (conv(img) - offset)
        total = term if total is None else total + term
    return outscale * total + outoffset


# --------------------------------------------------------------------------
# the command

class _Cfg:
    def __init__(self):
        self.files = []               # positional file names, in order
        self.outfile = None
        self.scales = {}              # k (1-based) -> scale
        self.offset = 0.0
        self.outoffset = 0.0
        self.outscale = 1.0
        self.header = 0


def _scale_k(cfg, st, vals):
    cfg.scales[st.k] = vals[0]


def _offset(cfg, st, vals):
    cfg.offset = cfg.outoffset = vals[0]          # upstream: -offset sets both (later flags win)


def _outoffset(cfg, st, vals):
    cfg.outoffset = vals[0]


def _set(attr):
    def act(cfg, st, vals):
        setattr(cfg, attr, vals[0])
    return act


FLAGS = table("float_add", [
    ("-outfile -output", "FILE", (FILE,), _set("outfile"),
     "output file (default output.bin; upstream: a third file name)"),
    ("-scale1", "S", (NUM,), _scale_k, "scale of the first image (-scaleK: the K-th; default 1)"),
    ("-offset", "O", (NUM,), _offset, "subtracted from every input pixel (also sets -outoffset)"),
    ("-outoffset", "O", (NUM,), _outoffset, "added to every output pixel"),
    ("-outscale", "S", (NUM,), _set("outscale"), "multiplies the scaled sum"),
    ("-header", "BYTES", (NONNEG_INT,), _set("header"), "bytes skipped in each input; file 1's go to the output"),
])
_SCALE_K = re.compile(r"-scale([1-9][0-9]*)\Z")


def config_from_args(argv):
    argv = [str(a) for a in argv]
    cfg = _Cfg()

    class St:
        k = 1
    st = St()
    # -scaleK for any K: rewrite to the table's -scale1 row with K remembered
    words, ks = [], {}
    for i, w in enumerate(argv):
        m = _SCALE_K.match(w)
        if m and i + 1 < len(argv):
            ks[len(words)] = int(m.group(1))
            w = "-scale1"
        words.append(w)

    def positional(word, i):
        if word.startswith("-"):
            return False
        cfg.files.append(word)
        return True
    uses = Parser(PROG, FLAGS, positional).tokenize(words)
    for use in uses:
        st.k = ks.get(use.index, 2 if use.name == "-scale2" else 1)
        use.flag.apply(cfg, st, use.values)
    if not cfg.files:
        raise UsageError("")
    if cfg.outfile is None:
        if len(cfg.files) > 3:
            raise FlagError(f"{len(cfg.files)} file names: with more than two inputs name the output "
                            f"with -outfile (upstream takes file 3 as the output)")
        cfg.outfile = cfg.files[2] if len(cfg.files) == 3 else "output.bin"
        cfg.inputs = cfg.files[:2]
    else:
        cfg.inputs = list(cfg.files)
    bad = [k for k in cfg.scales if k > len(cfg.inputs)]
    if bad:
        raise FlagError(f"-scale{bad[0]}: only {len(cfg.inputs)} input file(s)")
    return cfg


def run(cfg) -> int:
    out = []
    for k, name in enumerate(cfg.inputs, 1):
        out.append(f"filename: {name}  input{k}")
    out.append(f"filename: {cfg.outfile}  output")
    raws = [read_bytes(p, FLOAT_IMAGE_LIMIT, "a float image") for p in cfg.inputs]
    n = len(raws[0])
    for p, r in zip(cfg.inputs, raws):
        if len(r) != n:
            raise FileError(f"{p}: {len(r)} bytes, {cfg.inputs[0]} has {n}: the images differ in size")
    if cfg.header > n or (n - cfg.header) % 4:
        raise FileError(f"{cfg.inputs[0]}: {n} bytes is not a {cfg.header}-byte header plus 4-byte floats")
    imgs = [np.frombuffer(r, dtype="<f4", offset=cfg.header) for r in raws]
    scales = [cfg.scales.get(k, 1.0) for k in range(1, len(imgs) + 1)]
    result = float_add(imgs, scales, cfg.offset, cfg.outscale, 0.0)
    outfloat = (result + cfg.outoffset).astype(np.float32)
    pixels = result.size
    out.append(f"header = {cfg.header} bytes pixel zero offset = {fmt_g(cfg.offset)} "
               f"({fmt_g(cfg.outoffset)} in output)")
    out.append(f"{pixels} pixels ")
    with np.errstate(invalid="ignore", over="ignore"):
        over = int(np.count_nonzero(np.isinf(outfloat)))
        under = int(np.count_nonzero(~np.isfinite(outfloat)))
        valid = ~np.isnan(outfloat)
        r = result[valid]
        out.append(f"{over} overflows, {under} underflows")
        if r.size:
            avg = float(r.mean())
            rms = math.sqrt(float((r * r).mean()))
            dev = outfloat[valid].astype(np.float64) - cfg.outoffset - avg
            rmsd = math.sqrt(float((dev * dev).mean()))
            out.append(f"max = {fmt_g(float(r.max()))} min = {fmt_g(float(r.min()))}")
            out.append(f"mean = {fmt_g(avg)} rms = {fmt_g(rms)} rmsd = {fmt_g(rmsd)}")
    out.append(f"writing {cfg.outfile} as a {cfg.header}-byte header with {pixels} 4-byte floats")
    atomic_write(cfg.outfile, [raws[0][:cfg.header], outfloat.astype("<f4").tobytes()])
    sys.stdout.write("\n".join(out) + "\n")
    return 0


def usage_text() -> str:
    return Parser(PROG, FLAGS).usage(
        f"usage: {PROG} file1.bin file2.bin [outfile.bin] [options]\n"
        f"       {PROG} -outfile sum.bin file1.bin file2.bin file3.bin ... [-scaleK S]")


def output_set(cfg) -> OutputSet:
    """The output file (checked before the inputs are read) and the inputs it may not be."""
    return OutputSet([("-outfile", cfg.outfile)],
                     inputs=[(f"input {k}", p) for k, p in enumerate(cfg.inputs, 1)])


def main(argv) -> int:
    return run_main(PROG, argv, config_from_args, run, usage_text, outputs=output_set)


def main_cli() -> None:
    flags_main_cli(PROG, main)


if __name__ == "__main__":
    main_cli()
