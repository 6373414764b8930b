"""Serial batches on Dask (-workers N, -scheduler ADDR; nanobrag_torch.cluster): the files
are byte-identical to the in-process batch, a failed task keeps the finished blocks and the
same command then renders only the missing shots, bad addresses fail in one line."""
from __future__ import annotations

import importlib

import pytest

from nanobrag_torch.cli import main

distributed = pytest.importorskip("distributed", reason="dask.distributed not installed "
                                  "(pip install 'nanobrag-torch[cluster]')")

BASE = ["-cell", "70", "80", "90", "75", "85", "95", "-default_F", "100", "-N", "5",
        "-pixel", "0.4", "-distance", "50", "-oversample", "2", "-detpixels", "16"]


def _batch(d, n=5):
    return BASE + ["-floatfile", f"{d}/s.bin", "-intfile", f"{d}/s.img", "-noisefile", f"{d}/n.img",
                   "-nopgm", "-manifest", f"{d}/m.csv", "-shots", str(n), "-seed", "5"]


def _rendered(out):
    return sorted(int(line.split()[1].split("/")[0]) for line in out.splitlines() if line.startswith("shot "))


def _files(d, name):
    return {p.name: p.read_bytes().replace(name.encode() + b"/", b"X/") for p in d.iterdir()}


@pytest.fixture
def inproc():
    """A LocalCluster of 2 worker threads in this process (its address for -scheduler)."""
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                       dashboard_address=None)
    yield cluster.scheduler_address
    cluster.close()


@pytest.mark.parametrize("workers", ["2", "auto"])
def test_workers_processes_byte_identical_to_in_process(tmp_path, monkeypatch, capsys, workers):
    import os

    from nanobrag_torch.cluster import auto_workers
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ref").mkdir()
    (tmp_path / "w").mkdir()
    assert main(_batch("ref")) == 0
    capsys.readouterr()
    assert main(_batch("w") + ["-workers", workers]) == 0
    out = capsys.readouterr().out
    n = 2 if workers == "2" else auto_workers("cpu", cores=os.cpu_count())
    assert f"Dask LocalCluster of {n} worker processes" in out and "Dask dashboard:" in out
    assert out.count("100% done") == 1 and _rendered(out) == [1, 2, 3, 4, 5]
    assert _files(tmp_path / "w", "w") == _files(tmp_path / "ref", "ref")


def test_failed_task_keeps_blocks_and_rerun_renders_only_missing(tmp_path, monkeypatch, capsys, inproc):
    shots_mod = importlib.import_module("nanobrag_torch.shots")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ref").mkdir()
    (tmp_path / "b").mkdir()
    assert main(_batch("ref")) == 0
    capsys.readouterr()
    real = shots_mod.run_shots

    def failing(sim, seed, ks, progress=None):       # the block holding shot 3 raises
        for k, image in real(sim, seed, ks, progress):
            if k == 3:
                raise RuntimeError("worker lost its disk")
            yield k, image
    monkeypatch.setattr(shots_mod, "run_shots", failing)
    assert main(_batch("b") + ["-scheduler", inproc]) == 1
    cap = capsys.readouterr()
    err = cap.err.strip().splitlines()
    assert len(err) == 1 and "worker lost its disk" in err[0] and "run the same command again" in err[0]
    kept = _rendered(cap.out)
    assert 3 not in kept and len(kept) == 3            # blocks of 2: [1, 2] [3, 4] [5]
    left = sorted(p.name for p in (tmp_path / "b").iterdir())
    assert left == sorted(["m.csv"] + [f"{s}_{k:05d}.{e}" for k in kept
                                       for s, e in (("s", "bin"), ("s", "img"), ("n", "img"))])
    monkeypatch.setattr(shots_mod, "run_shots", real)
    assert main(_batch("b") + ["-scheduler", inproc]) == 0
    out = capsys.readouterr().out
    assert "3 of 5 shots complete" in out and _rendered(out) == [3, 4]
    assert _files(tmp_path / "b", "b") == _files(tmp_path / "ref", "ref")


def test_scheduler_from_environment(tmp_path, monkeypatch, capsys, inproc):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ref").mkdir()
    (tmp_path / "e").mkdir()
    assert main(_batch("ref", 2)) == 0
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", inproc)
    assert main(_batch("e", 2)) == 0
    assert f"Dask scheduler {inproc}" in capsys.readouterr().out
    assert _files(tmp_path / "e", "e") == _files(tmp_path / "ref", "ref")


@pytest.mark.parametrize("argv,word,status", [
    (["-scheduler", "nonsense"], "-scheduler: expected a scheduler address", 2),
    (["-scheduler", "tcp://127.0.0.1:9"], "-scheduler: cannot reach the Dask scheduler", 1),
    (["-workers", "0"], "-workers", 2),
    (["-workers", "many"], "-workers", 2),
    (["-workers", "2", "-scheduler", "tcp://127.0.0.1:9"], "-workers", 2),
    (["-workers", "2", "-nexusfile", "b/x.h5"], "-workers", 2),
])
def test_bad_cluster_flags_one_line_no_files(tmp_path, monkeypatch, capsys, argv, word, status):
    import dask
    monkeypatch.chdir(tmp_path)
    (tmp_path / "b").mkdir()
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        assert main(_batch("b") + argv) == status
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and word in err[0], err
    assert list((tmp_path / "b").iterdir()) == []


def test_workers_need_shots(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(BASE + ["-workers", "2", "-nopgm", "-nonoise"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "-workers: distributes the shots of a batch" in err[0]
    assert list(tmp_path.iterdir()) == []


def test_labels_through_workers_byte_identical(tmp_path, monkeypatch, capsys, inproc):
    pytest.importorskip("h5py")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ref").mkdir()
    (tmp_path / "w").mkdir()
    lab = lambda d: ["-labels", f"{d}/l.h5", "-label_threshold", "2"]  # noqa: E731
    assert main(_batch("ref", 3) + lab("ref")) == 0
    assert main(_batch("w", 3) + lab("w") + ["-scheduler", inproc]) == 0
    h5py = pytest.importorskip("h5py")

    def contents(d, name):        # HDF5 compared by content (attributes and datasets); the rest by bytes
        out = {}
        for p in d.iterdir():
            if p.suffix == ".h5":
                with h5py.File(p) as fh:
                    items = {}
                    fh.visititems(lambda n, o: items.setdefault(n, o[()].tobytes())
                                  if isinstance(o, h5py.Dataset) else None)
                    out[p.name] = (sorted((k, str(v)) for k, v in fh.attrs.items()), items)
            elif p.name != "m.csv":        # the manifest holds the HDF5 files' sha256
                out[p.name] = p.read_bytes()
        return out
    ref = contents(tmp_path / "ref", "ref")
    assert "l_00003.h5" in ref and contents(tmp_path / "w", "w") == ref
    rows = lambda d: [r.split(",")[:-2] for r in (tmp_path / d / "m.csv").read_text().splitlines()]  # noqa: E731
    assert rows("w") == rows("ref")


def _die_once_at_shot_3(marker):
    """Run on a worker process: the first render of shot 3 kills the process (os._exit)."""
    import importlib
    import os
    mod = importlib.import_module("nanobrag_torch.shots")
    real = mod.run_shots

    def dying(sim, seed, ks, progress=None):
        for k, image in real(sim, seed, ks, progress):
            if k == 3 and not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            yield k, image
    mod.run_shots = dying


@pytest.mark.parametrize("allowed_failures", [3, 0])
def test_worker_killed_mid_run(tmp_path, monkeypatch, capsys, allowed_failures):
    """A worker process dies while rendering shot 3: with Dask's retries the run finishes
    on the restarted worker; without (allowed-failures 0) it stops in one line and the
    same command renders only the missing shots. Files byte-equal to the in-process batch."""
    import sys

    import cloudpickle
    import dask
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ref").mkdir()
    (tmp_path / "b").mkdir()
    assert main(_batch("ref")) == 0
    capsys.readouterr()
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with dask.config.set({"distributed.scheduler.allowed-failures": allowed_failures}):
        cluster = distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
        try:
            with distributed.Client(cluster) as client:
                client.run(_die_once_at_shot_3, str(tmp_path / "died"))
            status = main(_batch("b") + ["-scheduler", cluster.scheduler_address])
            cap = capsys.readouterr()
            assert (tmp_path / "died").exists()
            if allowed_failures:
                assert status == 0 and _rendered(cap.out) == [1, 2, 3, 4, 5]
            else:
                err = cap.err.strip().splitlines()
                assert status == 1 and len(err) == 1 and "run the same command again" in err[0]
                kept = _rendered(cap.out)
                assert 3 not in kept
                assert main(_batch("b") + ["-scheduler", cluster.scheduler_address]) == 0
                out = capsys.readouterr().out
                assert _rendered(out) == sorted(set(range(1, 6)) - set(kept))
        finally:
            cluster.close()
    assert _files(tmp_path / "b", "b") == _files(tmp_path / "ref", "ref")


def test_workers_auto_sized_to_the_machine():
    from nanobrag_torch.cluster import CORES_PER_WORKER, auto_workers
    assert auto_workers("cpu", cores=2) == 1 and auto_workers("cpu", cores=1) == 1
    assert auto_workers("cpu", cores=64) == 64 // CORES_PER_WORKER
    assert auto_workers("cuda", gpus=4) == 4 and auto_workers("cuda:0", gpus=0) == 1
