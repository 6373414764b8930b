"""Serial batches on Dask workers (-shots N with -workers N or -scheduler ADDR).

    nanobrag-torch ... -shots 1000 -seed 7 -workers 2                 # a LocalCluster here
    nanobrag-torch ... -shots 1000 -seed 7 -scheduler tcp://host:8786 # an existing scheduler
    DASK_SCHEDULER_ADDRESS=tcp://host:8786 nanobrag-torch ... -shots 1000 -seed 7

The client (the command) finds the shots still to render (the manifest's complete shots,
checked by sha256, are skipped, as in-process), cuts them into blocks and submits one task
per block. A task renders its block with a Simulator kept by the worker between tasks and
writes the block's files itself, each file atomically (io.outputs staging); it returns
only the manifest rows and the summary lines, so no image travels through the scheduler.
The client writes the manifest (atomically) after each finished block, so a run whose
worker dies or whose task fails keeps every finished block, and the same command run
again renders only the missing shots. The files are byte-identical to the in-process run.

Workers must see the client's working folder (the same paths: a shared file system).
Each worker uses torch threads = its host's cores / the workers on that host; with
-device cuda, worker i (by its name, else its rank on the scheduler) takes cuda:(i mod
the GPUs of its host).
"""
from __future__ import annotations

import importlib
import io as _io
import math
import os
import pickle
import threading

from .errors import ConfigError

_SIMS: dict = {}          # on a worker: (run token, device, thread) -> Simulator, reused between tasks
_LOCK = threading.Lock()


def scheduler_address(o):
    """The scheduler of a batch: -scheduler, else $DASK_SCHEDULER_ADDRESS unless -workers."""
    if o.scheduler is not None:
        return o.scheduler
    if o.workers is None:
        return os.environ.get("DASK_SCHEDULER_ADDRESS") or None
    return None


def distributed(o) -> bool:
    return o.workers is not None or scheduler_address(o) is not None


CORES_PER_WORKER = 8      # -workers auto on CPU: torch's threads scale well to about this many


def auto_workers(device: str, cores: int | None = None, gpus: int | None = None) -> int:
    """-workers auto: one worker per visible GPU with -device cuda; on CPU one worker per
    CORES_PER_WORKER cores, at least 1 (on 2 cores 1 worker is faster than 2, measured)."""
    if str(device).startswith("cuda"):
        if gpus is None:
            import torch
            gpus = torch.cuda.device_count()
        return max(1, gpus)
    cores = (os.cpu_count() or 1) if cores is None else cores
    return max(1, cores // CORES_PER_WORKER)


def worker_count(o, device) -> int:
    """The LocalCluster's size: -workers N, or auto_workers for -workers auto."""
    return auto_workers(device) if o.workers == "auto" else int(o.workers)


def _worker_index(worker) -> int:
    name = str(worker.name)
    if name.isdigit():
        return int(name)
    try:
        ranks = sorted(worker.scheduler_info.get("workers", {}))      # not always filled in
        return ranks.index(worker.address)
    except (AttributeError, ValueError):
        return 0


def render_block(cfg, seed: int, block: list, n: int, token: str, cwd: str, per_host: dict,
                 client_pid: int):
    """On a worker: render shots `block` of the batch, write their files (atomically, as
    one staged set), return ({k: manifest row}, summary text)."""
    import torch

    from .io.outputs import OutputSet
    from .runner import _shot_files, _write_image
    from .simulator import Simulator
    _shots = importlib.import_module(__package__ + ".shots")
    if isinstance(cfg, bytes):
        cfg = pickle.loads(cfg)
    if os.getcwd() != cwd:
        os.chdir(cwd)
    device = None
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        worker = None
    if worker is not None and os.getpid() != client_pid:      # a worker process of its own
        host = worker.address.rsplit(":", 1)[0]
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, per_host.get(host, 1))))
    if str(cfg.device).startswith("cuda") and ":" not in str(cfg.device) and torch.cuda.is_available():
        device = f"cuda:{(_worker_index(worker) if worker is not None else 0) % torch.cuda.device_count()}"
    key = (token, device, threading.get_ident())     # one Simulator per worker thread
    with _LOCK:
        for old in [k for k in _SIMS if k[0] != token]:      # an earlier run's
            del _SIMS[old]
        sim = _SIMS.get(key)
    if sim is None:
        sim = Simulator(cfg, device=device, images=cfg.output.shots or 1)    # None: the config's
        with _LOCK:
            _SIMS[key] = sim
    o = cfg.output
    panels = 1 if sim.static.panel_geoms is None else len(sim.static.panel_geoms)
    out = _io.StringIO()
    rows = {}
    with OutputSet([p for k in block for p in _shot_files(o, k, panels)]).staged(), torch.no_grad():
        for k, image in _shots.run_shots(sim, seed, block):
            image.check_finite()
            files = _write_image(image, k - 1, out, None, n, label=f"shot {k}/{n}", nexus_still=True)
            rows[k] = _shots.manifest_row(k, seed, image, files, _shots.jitter_values(cfg, seed, k))
    return rows, out.getvalue()


def _has(module: str) -> bool:
    import importlib.util
    return importlib.util.find_spec(module) is not None


def _client(o, out, device="cpu"):
    """A connected dask Client (and the LocalCluster it owns, or None)."""
    import logging

    import dask
    from distributed import Client, LocalCluster
    for name in ("distributed", "distributed.worker", "distributed.scheduler", "distributed.nanny"):
        logging.getLogger(name).setLevel(logging.ERROR)
    addr = scheduler_address(o)
    if addr is None:
        dash = ":0" if _has("bokeh") else None
        n = worker_count(o, device)
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                               dashboard_address=dash, silence_logs=logging.ERROR)
        client = Client(cluster)
        print(f"Dask LocalCluster of {n} worker processes", file=out)
        return client, cluster
    flag = "-scheduler" if o.scheduler is not None else "DASK_SCHEDULER_ADDRESS"
    timeout = dask.config.get("distributed.comm.timeouts.connect", "10s")
    try:
        client = Client(addr, timeout=timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{flag}: cannot reach the Dask scheduler at {addr} ({reason})") from None
    print(f"Dask scheduler {addr}: {len(client.scheduler_info().get('workers', {}))} workers", file=out)
    return client, None


def _remove_stale_temporaries(files_of, ks) -> None:
    """The hidden temporaries (io.outputs.temp_name: .NAME.XXXXXXXX.tmp) a worker killed
    while writing shots ks left beside their files (files_of(k), every panel's); every task
    has ended by now."""
    import glob
    import re

    for k in ks:
        for path in files_of(k):
            folder, base = os.path.split(path)
            for tmp in glob.glob(os.path.join(glob.escape(folder or "."), f".{glob.escape(base)}.*.tmp")):
                if re.fullmatch(r"\.%s\.[0-9a-f]{8}\.tmp" % re.escape(base), os.path.basename(tmp)):
                    try:
                        os.unlink(tmp)
                    except OSError:
                        pass


def block_size(ntodo: int, nworkers: int, most: int) -> int:
    """Shots per task: at most `most`, small enough for two tasks per worker."""
    return max(1, min(most, math.ceil(ntodo / max(1, 2 * nworkers))))


def render(cfg, seed: int, n: int, todo: list, rows: dict, columns, progress, out, files_of) -> None:
    """Render shots `todo` of the batch on Dask; rows ({k: manifest row}) gets each
    finished block's rows, and the manifest is rewritten (atomically) after each block;
    files_of(k): shot k's files.
    A failed task: the other blocks still finish, then ConfigError (one line)."""
    import uuid

    from distributed import as_completed

    from .io.outputs import OutputSet
    from .runner import _write_manifest
    _shots = importlib.import_module(__package__ + ".shots")
    o = cfg.output
    client, cluster = _client(o, out, cfg.device)
    try:
        if cluster is not None and not _has("bokeh"):
            print("Dask dashboard: not served (pip install bokeh for it)", file=out)
        else:
            print(f"Dask dashboard: {client.dashboard_link}", file=out)
        workers = client.scheduler_info().get("workers", {})
        per_host: dict = {}
        for w in workers:
            host = w.rsplit(":", 1)[0]
            per_host[host] = per_host.get(host, 0) + 1
        b = block_size(len(todo), len(workers) or (worker_count(o, cfg.device) if o.workers else 1), _shots.BLOCK_SHOTS)
        blocks = [todo[i:i + b] for i in range(0, len(todo), b)]
        # the config travels inside each task (not scattered: a lost worker would take the
        # scattered copy with it and fail every later task)
        cfg_f = pickle.dumps(cfg, protocol=pickle.HIGHEST_PROTOCOL)
        token, cwd = uuid.uuid4().hex, os.getcwd()
        futures = {client.submit(render_block, cfg_f, seed, blk, n, token, cwd, per_host, os.getpid(),
                                 key=f"nanobrag-shots-{blk[0]}-{blk[-1]}-{token}", pure=False): blk
                   for blk in blocks}
        done, failed = 0, []
        if progress is not None:
            progress(0, len(todo))
        for fut in as_completed(futures):
            blk = futures[fut]
            try:
                new, text = fut.result()
            except Exception as exc:       # a task that raised, or a worker lost too often
                failed.append((blk, exc))
                continue
            out.write(text)
            rows.update(new)
            with OutputSet([o.manifest]).staged():
                _write_manifest(o.manifest, rows, columns)
            done += len(blk)
            if progress is not None:
                progress(done, len(todo))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
        _remove_stale_temporaries(files_of, todo)
    if failed:
        blk, exc = failed[0]
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, ConfigError):
            what = str(exc)
        lost = sum(len(b) for b, _ in failed)
        raise ConfigError(f"-shots: {lost} shots failed on the Dask workers (shots {blk[0]}-{blk[-1]}: "
                          f"{what.splitlines()[0]}); the {len(rows)} shots done are in place and in "
                          f"{o.manifest}: run the same command again to render the rest")
