"""``deepclust check`` from the command line: the table, the exit status, the JSON, and bad
input as one line."""
import json

import pytest

import deepclust.ops
from deepclust.cli import main


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_exit_status_and_table(monkeypatch, tmp_path, capsys):
    path = tmp_path / "check.json"
    args = ["check", "--device", "cpu", "--ops", "hard_assign,target_distribution", "--impl",
            "torch", "--dtype", "fp32", "--dtype", "bf16", "--quick", "--no-progress",
            "--json", str(path)]
    rc, out, _ = _run(args, capsys)
    assert rc == 0, out
    lines = out.splitlines()
    header = next(l for l in lines if l.startswith("op "))
    for col in ("path", "dtype", "max error", "bound", "result"):
        assert col in header
    assert sum(" PASS" in l for l in lines) == 4 and "4 passed, 0 failed" in out
    res = json.loads(path.read_text())
    assert res["passed"] is True and len(res["rows"]) == 4
    assert {r["op"] for r in res["rows"]} == {"hard_assign", "target_distribution"}
    # the same check with one op broken exits 1 and names it
    real = deepclust.ops.target_distribution
    monkeypatch.setattr(deepclust.ops, "target_distribution",
                        lambda q, **k: real(q, **k).roll(1, dims=1))
    rc, out, _ = _run(args[:-2], capsys)
    assert rc == 1 and "FAIL target_distribution [torch, fp32]" in out


@pytest.mark.parametrize(
    "args,msg",
    [
        (["check", "--ops", "nope"], "unknown op 'nope'"),
        (["check", "--dtype", "fp8"], "unknown dtype 'fp8'"),
        (["check", "--impl", "cuda"], "unknown impl 'cuda'"),
        (["check", "--device", "banana"], "is not a device"),
        (["check", "--device", "meta"], "only cpu and cuda"),
        (["check", "--device", "cuda:7"], "--device 'cuda:7'"),
        (["check", "--json", "/no/such/dir/c.json"], "does not exist"),
    ],
    ids=["op", "dtype", "impl", "device-name", "device-type", "device-absent", "json-folder"],
)
def test_errors_are_one_line(args, msg, capsys):
    rc, out, err = _run(args, capsys)
    assert rc == 2 and err.startswith("deepclust: error:") and msg in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
