"""Refine crystal and detector parameters against a diffraction image.

The model is nanobrag_torch's simulator: the cell (a, b, c, alpha, beta, gamma), the
misset angles, the detector distance and the beam centre are config values replaced by
tensors, and the image is differentiable with respect to them. Starting from values
perturbed by 0.5 % (cell), 0.3 deg (misset), 1 mm (distance) and 0.3 mm (beam centre),
least squares on the image recovers the values used for the target to within 0.02 A,
0.02 deg and 0.02 mm: first on both images blurred (so that spots 3 pixels apart
overlap), then on the images themselves.

    python examples/refine.py                      # the corpus image triclinic_misset (nanoBragg.c)
    python examples/refine.py --simulate --noise   # an image simulated here, with Poisson noise
    python examples/refine.py --method lbfgs       # L-BFGS on reverse-mode gradients
    python examples/refine.py --method sgd         # Adam on random pixel subsets (run(pixels=))

Methods: lm (default), Levenberg-Marquardt with the Jacobian from forward-mode AD (one
Jacobian-vector product per parameter), a few iterations; lbfgs, torch.optim.LBFGS on
the gradient, more iterations; sgd, Adam on seeded random pixel samples.

Prints the trajectory (loss and largest error of each parameter group per iteration),
and writes OUT/trajectory.csv and OUT/refine.svg (loss and parameter errors against
iteration). Needs only torch and numpy. Exit status 0 when every parameter ends within
tolerance of the true value.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.autograd.forward_ad as fwAD

import nanobrag_torch as nb

REPO = Path(__file__).resolve().parents[1]
CORPUS_IMAGE = REPO.parent / "shared" / "golden" / "cases" / "triclinic_misset" / "float.bin"
# the corpus case triclinic_misset: the arguments nanoBragg.c was run with
TRUE_ARGS = ("-cell 70 80 90 75 85 95 -misset 10 20 30 -default_F 100 -N 5 -lambda 1.0 "
             "-distance 100 -pixel 0.1 -detpixels 256").split()
TRUE = {
    "cell": [70.0, 80.0, 90.0, 75.0, 85.0, 95.0],   # A, A, A, deg, deg, deg
    "misset": [10.0, 20.0, 30.0],                    # deg
    "distance": [100.0],                             # mm
    "beam": [12.85, 12.85],                          # mm: -Xbeam -Ybeam (MOSFLM default, (25.6 + 0.1) / 2)
}
# groups reported (name, parameter, indices, unit) and their tolerance
GROUPS = [("cell lengths", "cell", slice(0, 3), "A"), ("cell angles", "cell", slice(3, 6), "deg"),
          ("misset", "misset", slice(0, 3), "deg"), ("distance", "distance", slice(0, 1), "mm"),
          ("beam centre", "beam", slice(0, 2), "mm")]
TOLERANCE = 0.02
# optimisation variables are z = (value - start) / SCALE: comparable steps for every parameter
SCALE = {"cell": [0.1, 0.1, 0.1, 0.1, 0.1, 0.1], "misset": [0.1, 0.1, 0.1], "distance": [0.5],
         "beam": [0.1, 0.1]}


def perturbed_start(seed: int) -> dict:
    """The true values moved by 0.5 % (cell), 0.3 deg (misset), 1 mm, 0.3 mm; random signs."""
    rng = np.random.default_rng(seed)
    sign = lambda n: rng.choice([-1.0, 1.0], size=n)  # noqa: E731
    t = {k: np.array(v) for k, v in TRUE.items()}
    return {"cell": t["cell"] * (1 + 0.005 * sign(6)), "misset": t["misset"] + 0.3 * sign(3),
            "distance": t["distance"] + 1.0 * sign(1), "beam": t["beam"] + 0.3 * sign(2)}


def apply(cfg, values: dict) -> None:
    """Put the parameter tensors into the config (the attributes documented in docs/gradients.md)."""
    cfg.crystal.cell = values["cell"]
    cfg.crystal.misset_deg = values["misset"]
    cfg.detector.distance_mm = values["distance"][0]
    cfg.detector.beam_center_mm = values["beam"]


def target_image(args, cfg) -> torch.Tensor:
    """The image to fit: a float file (the corpus image by default) or a simulated one."""
    shape = (cfg.detector.spixels, cfg.detector.fpixels)
    if not args.simulate:
        path = Path(args.image)
        if not path.exists():
            sys.exit(f"{path}: not found (give --image FILE, or --simulate)")
        return torch.from_numpy(np.fromfile(path, dtype="<f4").astype(np.float64)).reshape(shape)
    truth = nb.config_from_args(TRUE_ARGS)
    apply(truth, {k: torch.tensor(v, dtype=torch.float64) for k, v in TRUE.items()})
    with torch.no_grad():
        image = nb.Simulator(truth).run().pixels
    if args.noise:
        gen = torch.Generator().manual_seed(args.seed)
        image = torch.poisson(image * args.noise_scale, generator=gen) / args.noise_scale
    return image


def blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur (sigma in pixels; 0: the image itself), zero beyond the edges."""
    if sigma <= 0:
        return image
    r = int(math.ceil(3 * sigma))
    x = torch.arange(-r, r + 1, dtype=image.dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = k / k.sum()
    im = torch.nn.functional.conv2d(image[None, None], k.reshape(1, 1, 1, -1), padding=(0, r))
    im = torch.nn.functional.conv2d(im, k.reshape(1, 1, -1, 1), padding=(r, 0))
    return im[0, 0]


def errors(values: dict) -> dict:
    """Largest |value - true| per group."""
    return {name: float(np.abs(values[p].detach().numpy()[sl] - np.array(TRUE[p])[sl]).max())
            for name, p, sl, _ in GROUPS}


class Problem:
    """The parameters as one vector z (scaled offsets from the start), the simulator and the target."""

    def __init__(self, args):
        self.cfg = nb.config_from_args(TRUE_ARGS)
        self.observed = target_image(args, self.cfg)
        self.start = perturbed_start(args.seed)
        self.names = list(self.start)
        self.sizes = [len(self.start[k]) for k in self.names]
        self.z0 = torch.tensor(np.concatenate([self.start[k] for k in self.names]))
        self.dz = torch.tensor(np.concatenate([SCALE[k] for k in self.names]))
        self.set(torch.zeros_like(self.z0))
        self.sim = nb.Simulator(self.cfg, dtype=torch.float64)
        self.scale = float((self.observed ** 2).mean())

    def values(self, z) -> dict:
        v = self.z0 + self.dz * z
        return dict(zip(self.names, torch.split(v, self.sizes)))

    def set(self, z) -> None:
        apply(self.cfg, self.values(z))

    def image(self, z, pixels=None) -> torch.Tensor:
        self.set(z)
        return self.sim.run(pixels=pixels).pixels

    def loss(self, model, observed) -> torch.Tensor:
        """Mean squared difference relative to the target's mean square."""
        return ((model - observed) ** 2).mean() / self.scale

    def full_loss(self, z) -> float:
        with torch.no_grad():
            return float(self.loss(self.image(z), self.observed))

    def jacobian(self, z, sigma: float):
        """(blurred image, d(blurred image)/dz (pixels, len(z))) by forward-mode AD: one
        Jacobian-vector product (a forward pass with dual numbers) per parameter."""
        columns = []
        for i in range(z.numel()):
            with fwAD.dual_level():
                tangent = torch.zeros_like(z)
                tangent[i] = 1.0
                with torch.no_grad():
                    image, d_image = fwAD.unpack_dual(self.image(fwAD.make_dual(z, tangent)))
                columns.append(blur(d_image, sigma).reshape(-1))
        return blur(image, sigma).reshape(-1), torch.stack(columns, dim=1)


def refine(args) -> dict:
    prob = Problem(args)
    z = torch.zeros_like(prob.z0)
    history = []
    t0 = time.time()

    def record(it, z):
        loss = prob.full_loss(z)
        errs = errors(prob.values(z))
        history.append({"iteration": it, "loss": loss, "time_s": time.time() - t0, **errs})
        print(f"{it:4d}  {loss:11.4e}  " + "  ".join(f"{errs[g[0]]:9.4f}" for g in GROUPS)
              + f"  {time.time() - t0:6.1f}s", flush=True)

    print("iter         loss  " + "  ".join(f"{g[0][:9]:>9}" for g in GROUPS) + "    time")
    print("                   " + "  ".join(f"{'(' + g[3] + ')':>9}" for g in GROUPS))
    record(0, z)
    # coarse to fine (lm, lbfgs): both images blurred (Gaussian, sigma in pixels), then sharp.
    # A spot is ~3 pixels wide and the start is up to 3 pixels off: blurred spots overlap,
    # so the blurred stages pull the pattern into place and the sharp stage finishes it
    stages = [float(s) for s in args.blur] + [0.0]
    if args.method == "lm":
        z = levenberg_marquardt(prob, z, stages, args.iterations, record)
    elif args.method == "lbfgs":
        z = lbfgs(prob, z, stages, args.iterations, record)
    else:
        z = sgd(prob, z, args, record)
    final = {k: v.detach().numpy() for k, v in prob.values(z).items()}
    return {"start": prob.start, "final": final, "history": history, "time_s": time.time() - t0}


def levenberg_marquardt(prob: Problem, z, stages, max_iterations: int, record):
    """Gauss-Newton steps (J^T J + lam diag(J^T J)) dz = -J^T r with J from forward-mode AD."""
    it = 0
    for sigma in stages:
        observed = blur(prob.observed, sigma).reshape(-1)
        with torch.no_grad():
            r = blur(prob.image(z), sigma).reshape(-1) - observed
        cost, lam = float(r @ r), 1e-2
        for _ in range(max_iterations):
            _, J = prob.jacobian(z, sigma)
            A, g = J.T @ J, J.T @ r
            while lam < 1e10:
                step = torch.linalg.solve(A + lam * torch.diag(torch.diag(A)), -g)
                with torch.no_grad():
                    r_new = blur(prob.image(z + step), sigma).reshape(-1) - observed
                if float(r_new @ r_new) < cost:
                    break
                lam *= 10.0
            else:
                break                                  # no step reduces the cost: converged
            decrease = (cost - float(r_new @ r_new)) / cost
            z, r, cost, lam = z + step, r_new, float(r_new @ r_new), max(lam / 10.0, 1e-9)
            it += 1
            record(it, z)
            if decrease < 1e-6 or float(step.abs().max()) < 1e-4:
                break                                  # converged at this resolution
    return z


def lbfgs(prob: Problem, z, stages, max_iterations: int, record):
    """torch.optim.LBFGS (strong Wolfe line search) on the reverse-mode gradient."""
    it = 0
    z = z.clone().requires_grad_()
    for sigma in stages:
        observed = blur(prob.observed, sigma)
        opt = torch.optim.LBFGS([z], lr=1.0, max_iter=1, max_eval=25, history_size=20,
                                line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=1e-15)

        def closure():
            opt.zero_grad()
            loss = prob.loss(blur(prob.image(z), sigma), observed)
            loss.backward()
            return loss
        previous = None
        for _ in range(max_iterations):
            opt.step(closure)                  # one L-BFGS iteration, its line search included
            it += 1
            record(it, z.detach())
            with torch.no_grad():
                loss = float(prob.loss(blur(prob.image(z), sigma), observed))
            if previous is not None and previous - loss <= 1e-8 * previous:
                break                          # converged at this resolution
            previous = loss
    return z.detach()


def sgd(prob: Problem, z, args, record):
    """Adam on random pixel samples: Simulator.run(pixels=) evaluates only the sampled pixels.

    Coarse to fine as the other methods, by sampling blocks: the sum over a random b x b
    block of pixels is a box-blurred image at a random point. The first half of the steps
    compare block sums (b = --block), the second half single pixels.
    """
    z = z.clone().requires_grad_()
    opt = torch.optim.Adam([z], lr=args.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, args.iterations, eta_min=args.lr * 0.01)
    gen = torch.Generator().manual_seed(args.seed)               # reproducible pixel draws
    observed = prob.observed
    sp, fp = observed.shape
    for it in range(1, args.iterations + 1):
        b = args.block if it <= args.iterations // 2 else 1
        n = max(1, args.pixels // (b * b))
        s0 = torch.randint(0, sp - b + 1, (n, 1, 1), generator=gen)
        f0 = torch.randint(0, fp - b + 1, (n, 1, 1), generator=gen)
        k = torch.arange(b)
        idx = ((s0 + k[None, :, None]) * fp + f0 + k[None, None, :]).reshape(-1)   # n blocks
        opt.zero_grad()
        model = prob.image(z, pixels=idx).reshape(n, -1).sum(dim=1)
        target = observed.reshape(-1)[idx].reshape(n, -1).sum(dim=1)
        loss = prob.loss(model, target) / (b * b)
        loss.backward()
        opt.step()
        sched.step()
        if it % args.report_every == 0 or it == args.iterations:
            record(it, z.detach())
    return z.detach()


def report(result) -> bool:
    print("\nparameter        true        start        final    |final-true|")
    ok = True
    for name, p, sl, unit in GROUPS:
        for i in range(sl.start, sl.stop):
            err = abs(result["final"][p][i] - TRUE[p][i])
            ok &= err < TOLERANCE
            label = f"{p}[{i}] ({unit})"
            print(f"{label:14s} {TRUE[p][i]:9.4f}  {result['start'][p][i]:11.4f}  "
                  f"{result['final'][p][i]:11.4f}  {err:12.2e}")
    iters = result["history"][-1]["iteration"]
    print(f"\n{iters} iterations, {result['time_s']:.1f} s; every parameter within {TOLERANCE}: {ok}")
    return ok


# ------------------------------------------------------------------ outputs
def write_csv(path: Path, history) -> None:
    keys = list(history[0])
    lines = [",".join(keys)] + [",".join(f"{h[k]:.9g}" for k in keys) for h in history]
    path.write_text("\n".join(lines) + "\n")


def write_svg(path: Path, history, title: str) -> None:
    """Two log-scale panels: loss, and each group's largest error with the tolerance line."""
    its = [h["iteration"] for h in history]
    panels = [("loss (relative mean square)", [("loss", [h["loss"] for h in history], "#000000")], None),
              ("|value - true|  (A, deg, mm)",
               [(g[0], [h[g[0]] for h in history], c) for g, c in
                zip(GROUPS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"))], TOLERANCE)]
    W, H, left, right, top, gap, ph = 720, 560, 80, 170, 40, 60, 200
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">', f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{title}</text>']
    x0, x1 = left, W - right
    xmax = max(its[-1], 1)
    xs = lambda i: x0 + (x1 - x0) * i / xmax  # noqa: E731
    for p, (label, series, tol) in enumerate(panels):
        y0 = top + p * (ph + gap)
        vals = [v for _, ys, _ in series for v in ys if v > 0 and math.isfinite(v)]
        if tol:
            vals.append(tol)
        lo, hi = math.floor(math.log10(min(vals))), math.ceil(math.log10(max(vals)))
        hi = max(hi, lo + 1)
        ys = lambda v: y0 + ph - ph * (math.log10(v) - lo) / (hi - lo)  # noqa: E731
        out.append(f'<rect x="{x0}" y="{y0}" width="{x1 - x0}" height="{ph}" fill="none" stroke="#444"/>')
        every = max(1, math.ceil((hi - lo) / 8))
        for d in range(lo, hi + 1):
            y = ys(10.0 ** d)
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}" stroke="#eee"/>')
            if (d - lo) % every == 0:
                out.append(f'<text x="{x0 - 6}" y="{y + 4:.1f}" text-anchor="end">1e{d}</text>')
        step = max(1, round(xmax / 10))
        for i in range(0, xmax + 1, step):
            out.append(f'<text x="{xs(i):.1f}" y="{y0 + ph + 16}" text-anchor="middle">{i}</text>')
        out.append(f'<text x="{(x0 + x1) / 2}" y="{y0 + ph + 32}" text-anchor="middle">iteration</text>')
        out.append(f'<text x="20" y="{y0 + ph / 2}" text-anchor="middle" '
                   f'transform="rotate(-90 20 {y0 + ph / 2})">{label}</text>')
        if tol:
            out.append(f'<line x1="{x0}" y1="{ys(tol):.1f}" x2="{x1}" y2="{ys(tol):.1f}" '
                       f'stroke="#888" stroke-dasharray="6 4"/>')
            out.append(f'<text x="{x1 - 4}" y="{ys(tol) - 4:.1f}" text-anchor="end" fill="#666">'
                       f'tolerance {tol}</text>')
        for k, (name, values, colour) in enumerate(series):
            pts = " ".join(f"{xs(i):.1f},{ys(max(v, 10.0 ** lo)):.1f}" for i, v in zip(its, values)
                           if math.isfinite(v))
            out.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="2"/>')
            if len(series) > 1:
                ly = y0 + 14 + 16 * k
                out.append(f'<line x1="{x1 + 8}" y1="{ly - 4}" x2="{x1 + 28}" y2="{ly - 4}" '
                           f'stroke="{colour}" stroke-width="2"/>')
                out.append(f'<text x="{x1 + 32}" y="{ly}">{name}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", default=str(CORPUS_IMAGE), help="float image to fit (little-endian float32)")
    ap.add_argument("--simulate", action="store_true", help="fit an image simulated here at the true values")
    ap.add_argument("--noise", action="store_true", help="with --simulate: Poisson noise")
    ap.add_argument("--noise-scale", type=float, default=1000.0,
                    help="--noise: photons per unit of the image (the target has ~1.35 units per pixel)")
    ap.add_argument("--method", choices=("lm", "lbfgs", "sgd"), default="lm",
                    help="lm: Levenberg-Marquardt (forward-mode Jacobian); lbfgs: L-BFGS; sgd: Adam on "
                         "random pixel subsets")
    ap.add_argument("--blur", type=float, nargs="*", default=[4.0],
                    help="lm, lbfgs: Gaussian sigmas (pixels) of the blurred stages before the sharp one")
    ap.add_argument("--iterations", type=int, default=None,
                    help="maximum iterations per stage (lm 30, lbfgs 200) or steps (sgd 600)")
    ap.add_argument("--pixels", type=int, default=8192, help="sgd: pixels per step")
    ap.add_argument("--block", type=int, default=9, help="sgd: block size of the coarse half (pixels)")
    ap.add_argument("--lr", type=float, default=0.3, help="sgd: Adam step (scaled units)")
    ap.add_argument("--report-every", type=int, default=20, help="sgd: full-image loss every N steps")
    ap.add_argument("--seed", type=int, default=1, help="signs of the start perturbation, noise, pixel draws")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    ap.add_argument("--out", default="refine_out", help="folder for trajectory.csv and refine.svg")
    args = ap.parse_args(argv)
    if args.iterations is None:
        args.iterations = {"lm": 30, "lbfgs": 200, "sgd": 600}[args.method]
    if args.noise and not args.simulate:
        ap.error("--noise needs --simulate")
    if args.threads:
        torch.set_num_threads(args.threads)
    source = ("simulated" + (" with Poisson noise" if args.noise else "")) if args.simulate else args.image
    method = {"lm": "Levenberg-Marquardt", "lbfgs": "L-BFGS", "sgd": f"Adam on {args.pixels}-pixel samples"}
    print(f"target: {source}\nmethod: {method[args.method]}")
    result = refine(args)
    ok = report(result)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "trajectory.csv", result["history"])
    title = f"refinement against {'a simulated image' if args.simulate else Path(args.image).parent.name}"
    write_svg(out / "refine.svg", result["history"], title)
    print(f"wrote {out / 'trajectory.csv'} and {out / 'refine.svg'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
