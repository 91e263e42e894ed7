"""``deepclust fit`` end to end on tiny data, and its errors."""
import json

import pytest

from deepclust.cli import main


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize(
    "args,msg",
    [
        (["fit", "nope", "--data", "digits"], "unknown method 'nope'"),
        (["fit", "kmeans", "--data", "nope"], "unknown data set 'nope'"),
        (["fit", "kmeans", "--data", "cora"], "pass root"),
        (["fit", "kmeans", "--data", "cora", "--root", "/no/such/dir"], "--root '/no/such/dir' is not a folder"),
        (["fit", "kmeans", "--data", "digits", "--device", "meta"], "only cpu and cuda"),
        (["fit", "kmeans", "--data", "digits", "--device", "banana"], "is not a device"),
        (["fit", "kmeans", "--data", "digits", "--epochs", "0"], "--epochs must be >= 1"),
        (["fit", "daegc", "--data", "digits"], "method 'daegc' needs one of the data sets"),
        (["fit", "swav", "--data", "sbm"], "method 'swav' needs one of the data sets"),
    ],
    ids=["method", "data", "no-root", "bad-root", "device", "device-name", "epochs", "daegc-digits",
         "swav-graph"],
)
def test_errors_are_one_line(args, msg, capsys):
    rc, out, err = _run(args, capsys)
    assert rc == 2
    assert err.startswith("deepclust: error:") and msg in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_file_names_the_path(tmp_path, capsys):
    rc, _, err = _run(["fit", "kmeans", "--data", "usps", "--root", str(tmp_path)], capsys)
    assert rc == 2 and str(tmp_path / "usps" / "usps.h5") in err


def test_cuda_unavailable(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    rc, _, err = _run(["fit", "kmeans", "--data", "digits", "--device", "cuda"], capsys)
    assert rc == 2 and "CUDA is not available" in err


def test_kmeans_on_blobs_json(tmp_path, capsys):
    path = tmp_path / "r.json"
    rc, out, _ = _run(["fit", "kmeans", "--data", "blobs", "--json", str(path), "--no-progress"], capsys)
    assert rc == 0
    last = out.strip().splitlines()[-1]
    assert last.startswith("kmeans on blobs: ACC") and "seconds" in last
    res = json.loads(path.read_text())
    assert {"acc", "nmi", "ari", "f1", "seconds", "device", "method", "data", "seed"} <= set(res)
    assert res["method"] == "kmeans" and res["data"] == "blobs" and res["device"] == "cpu"
    assert res["acc"] > 0.95  # well-separated blobs


@pytest.mark.data
def test_kmeans_on_shared_pendigits(data_root, capsys):
    rc, out, _ = _run(["fit", "kmeans", "--data", "pendigits", "--root", str(data_root), "--no-progress"], capsys)
    assert rc == 0 and "kmeans on pendigits" in out


def test_dec_through_the_command_line(tmp_path, capsys):
    path = tmp_path / "dec.json"
    rc, out, _ = _run(["fit", "dec", "--data", "blobs", "--epochs", "2", "--impl", "torch",
                       "--seed", "3", "--no-progress", "--json", str(path)], capsys)
    assert rc == 0 and out.strip().splitlines()[-1].startswith("dec on blobs: ACC")
    res = json.loads(path.read_text())
    assert res["method"] == "dec" and res["seed"] == 3 and res["impl"] == "torch"
    assert 0.0 <= res["acc"] <= 1.0 and res["seconds"] > 0
    # DEC reports the k-means baseline it starts from beside its own metrics
    assert set(res["extra"]["kmeans"]) == {"acc", "nmi", "ari", "f1"}
