"""Checkpoints of ``deepclust fit``: atomic files, refusals, and resume = uninterrupted run.

In process, a run is "killed" by an exception raised right after its first checkpoint write,
then resumed; end to end, ``deepclust fit`` runs as a subprocess that is killed with SIGKILL
as soon as its checkpoint file appears, then resumed with ``--resume``. Both must give the
uninterrupted run's results bitwise (the CPU, one thread).
"""
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from deepclust import checkpoint as C
from deepclust.cli import main
from deepclust.data.datasets import Dataset, load_digits, make_blobs, make_sbm
from deepclust.models.base import FitConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----------------------------------------------------------------------------- files
def test_atomic_save_and_read(tmp_path):
    path = tmp_path / "c.pt"
    C.atomic_save({"format": C.FORMAT, "version": C.VERSION, "method": "dec", "x": torch.ones(3)}, path)
    C.atomic_save({"format": C.FORMAT, "version": C.VERSION, "method": "dec", "x": torch.zeros(3)}, path)
    assert os.listdir(tmp_path) == ["c.pt"]  # no temporary file left behind
    obj = C.read(str(path))
    assert torch.equal(obj["x"], torch.zeros(3))


def test_rng_round_trip():
    state = C.capture_rng()
    a = (torch.rand(3), np.random.rand(3), random.random())
    C.restore_rng(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


@pytest.mark.parametrize("content,msg", [
    (b"not a checkpoint at all", "cannot read checkpoint"),
    ("foreign", "is not a deepclust fit checkpoint"),
    ("version", "has format version 999"),
])
def test_read_refuses(tmp_path, content, msg):
    path = tmp_path / "c.pt"
    if content == "foreign":
        torch.save({"model": torch.ones(2)}, path)
    elif content == "version":
        torch.save({"format": C.FORMAT, "version": 999}, path)
    else:
        path.write_bytes(content)
    with pytest.raises(C.CheckpointError, match=msg):
        C.read(str(path))


def _fake_checkpoint(path, **over):
    header = {"format": C.FORMAT, "version": C.VERSION, "method": "dec", "data": "blobs", "seed": 0,
              "epochs": 2, "impl": "torch", "world_size": 1, "progress": {}, "rng": {}, "state": {}}
    header.update(over)
    torch.save(header, path)


@pytest.mark.parametrize("args,msg", [
    (["--resume"], "--resume needs --checkpoint PATH"),
    (["--checkpoint", "{d}/missing.pt", "--resume"], "does not exist"),
    (["--checkpoint", "{d}/no/such/dir/c.pt"], "does not exist"),
    (["--checkpoint", "{d}/garbage.pt", "--resume"], "cannot read checkpoint"),
    (["--checkpoint", "{d}/foreign.pt", "--resume"], "is not a deepclust fit checkpoint"),
    (["--checkpoint", "{d}/old.pt", "--resume"], "has format version 0"),
    (["--checkpoint", "{d}/swav.pt", "--resume"], "was written with method 'swav'"),
    (["--checkpoint", "{d}/digits.pt", "--resume"], "was written with --data 'digits'"),
    (["--checkpoint", "{d}/seed.pt", "--resume"], "was written with --seed 5"),
], ids=["resume-alone", "missing", "bad-folder", "garbage", "foreign", "version", "method", "data", "seed"])
def test_bad_checkpoints_are_one_line(tmp_path, capsys, args, msg):
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01garbage")
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    _fake_checkpoint(tmp_path / "old.pt", version=0)
    _fake_checkpoint(tmp_path / "swav.pt", method="swav")
    _fake_checkpoint(tmp_path / "digits.pt", data="digits")
    _fake_checkpoint(tmp_path / "seed.pt", seed=5)
    args = [a.format(d=tmp_path) for a in args]
    rc, _, err = _run(["fit", "dec", "--data", "blobs", "--epochs", "2", "--impl", "torch",
                       "--no-progress"] + args, capsys)
    assert rc == 2, err
    assert err.startswith("deepclust: error:") and msg in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_kmeans_refuses_a_checkpoint(tmp_path, capsys):
    rc, _, err = _run(["fit", "kmeans", "--data", "blobs", "--checkpoint", str(tmp_path / "k.pt")], capsys)
    assert rc == 2 and "has no epochs to checkpoint" in err


# ----------------------------------------------------------------------------- in process
class _Killed(Exception):
    pass


def _small(name):
    if name == "blobs":
        return make_blobs(n_samples=300, n_features=8, n_clusters=3)
    if name == "sbm":
        return make_sbm(n_nodes=200, n_clusters=3)
    d = load_digits()
    return Dataset(d.x[:600], d.y[:600], "digits", image_shape=d.image_shape)


def _same(a, b):
    assert set(a) == set(b)
    for k in a:
        if k.endswith("seconds"):
            continue
        va, vb = np.asarray(a[k]), np.asarray(b[k])
        assert va.shape == vb.shape and (np.array_equal(va, vb) or (np.isnan(va).all() and np.isnan(vb).all())), k


@pytest.mark.parametrize("method,data,kill_after", [
    ("dec", "blobs", 1), ("dec", "blobs", 3), ("swav", "digits", 1), ("tcl", "digits", 1),
    ("pcl", "blobs", 1), ("daegc", "sbm", 1), ("daegc", "sbm", 3),
], ids=["dec-pretrain", "dec-fit", "swav", "tcl", "pcl", "daegc-pretrain", "daegc-train"])
def test_resume_equals_uninterrupted(tmp_path, monkeypatch, method, data, kill_after):
    import importlib

    torch.set_num_threads(1)
    mod = importlib.import_module(f"deepclust.models.{method}")
    ds = _small(data)
    cfg = FitConfig(seed=1, epochs=2, impl="torch", progress=False)
    ref = mod.cli_fit(ds, cfg)

    path = str(tmp_path / "c.pt")
    saves, orig = [], C.Checkpointer.save

    def save(self, progress, state):
        orig(self, progress, state)
        saves.append(dict(progress))
        if len(saves) == kill_after:
            raise _Killed

    monkeypatch.setattr(C.Checkpointer, "save", save)
    with pytest.raises(_Killed):
        mod.cli_fit(ds, cfg._replace(checkpoint=path))
    monkeypatch.setattr(C.Checkpointer, "save", orig)
    assert C.read(path)["progress"] == saves[-1]
    out = mod.cli_fit(ds, cfg._replace(checkpoint=path, resume=True))
    _same(ref, out)


# ----------------------------------------------------------------------------- SIGKILL
def _cmd(method, data, json_path, *extra):
    return [sys.executable, "-m", "deepclust.cli", "fit", method, "--data", data, "--epochs", "2",
            "--seed", "1", "--impl", "torch", "--no-progress", "--json", str(json_path), *extra]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.parametrize("method,data", [("dec", "blobs"), ("swav", "digits")])
def test_sigkill_then_resume(tmp_path, method, data):
    """``deepclust fit --checkpoint`` killed with SIGKILL as soon as its first checkpoint is
    on disk, then ``--resume``d, gives the uninterrupted run's metrics bitwise (one thread in
    the subprocesses and in this one)."""
    import threading

    from deepclust.cli import fit

    ckpt = tmp_path / "run.pt"
    victim = subprocess.Popen(_cmd(method, data, tmp_path / "killed.json", "--checkpoint", str(ckpt)),
                              env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def watch():  # kill -9 the moment the first checkpoint appears
        deadline = time.time() + 600
        while not ckpt.exists() and victim.poll() is None and time.time() < deadline:
            time.sleep(0.002)
        victim.send_signal(signal.SIGKILL)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:  # meanwhile, the uninterrupted run in this process
        torch.set_num_threads(1)
        ref = fit(method, data, seed=1, epochs=2, impl="torch", progress=False)
    finally:
        watcher.join()
        victim.wait()
    assert ckpt.exists(), "the run wrote no checkpoint"
    killed_at = C.read(str(ckpt))["progress"]
    assert not (tmp_path / "killed.json").exists(), "the run finished before the kill"
    # the resumed run: the same command line, in this process
    rc = main(_cmd(method, data, tmp_path / "resumed.json", "--checkpoint", str(ckpt), "--resume")[3:])
    assert rc == 0
    res = json.loads((tmp_path / "resumed.json").read_text())
    for key in ("acc", "nmi", "ari", "f1"):
        assert res[key] == ref[key], (key, killed_at)
    for name, m in ref.get("extra", {}).items():
        if isinstance(m, dict):
            assert res["extra"][name] == m
        elif name == "loss":
            assert res["extra"][name] == m
