"""``deepclust demo``: the fits, the DEC loss timing of ``deepclust.check``, the quick check and
the quick bench, in that order, and the JSON of all four (the parts replaced by stand-ins)."""
import json

import deepclust.check
from deepclust.cli import _demo, main


def test_demo_runs_its_parts_in_order(tmp_path, monkeypatch, capsys):
    calls = []

    def fit(method, data, **kw):
        calls.append(("fit", method, data, kw["device"]))
        return {"method": method, "data": data, "acc": 0.5, "nmi": 0.4, "ari": 0.3, "f1": 0.2,
                "seconds": 1.0}

    def timing(device):
        calls.append(("timing", device))
        return {"op": "dec_loss", "line": "dec_loss fwd+bwd: fused 1 ms"}

    def check(device, **kw):
        calls.append(("check", device, tuple(kw["dtypes"]), kw["quick"]))
        return True

    def bench(ops, **kw):
        calls.append(("bench", tuple(ops), kw["quick"], kw["in_process"]))
        md = tmp_path / "bench.md"
        md.write_text("| table |\n")
        return {"csv": [], "png": [], "markdown": str(md), "failed": []}

    monkeypatch.setattr(_demo, "fit", fit)
    monkeypatch.setattr(deepclust.check, "time_dec_loss", timing)
    monkeypatch.setattr(_demo, "check", check)
    monkeypatch.setattr(_demo, "bench", bench)
    path = tmp_path / "demo.json"
    assert main(["demo", "--no-progress", "--json", str(path)]) == 0
    assert calls == [("fit", "kmeans", "digits", "cpu"), ("fit", "dec", "digits", "cpu"),
                     ("timing", "cpu"), ("check", "cpu", ("fp32", "bf16"), True),
                     ("bench", ("dec",), True, True)]
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("kmeans on digits: ACC 0.5000") and out[1].startswith("dec on digits")
    assert out[2] == "dec_loss fwd+bwd: fused 1 ms"
    assert "$ deepclust check --quick --dtype fp32,bf16 --device cpu" in out
    assert out[-1] == "| table |"
    res = json.loads(path.read_text())
    assert set(res) == {"fits", "timing", "check", "bench"} and res["check"] == {"passed": True}


def test_a_missing_bench_folder_skips_the_bench(monkeypatch, capsys):
    def no_bench(ops, **kw):
        raise _demo.CLIError("the benchmark scripts (bench/common.py) are not here")

    monkeypatch.setattr(_demo, "bench", no_bench)
    assert _demo._demo_bench("cpu", progress=False) == {
        "skipped": "the benchmark scripts (bench/common.py) are not here"}
    assert "bench: skipped (the benchmark scripts" in capsys.readouterr().out


def test_a_bad_device_is_one_line(capsys):
    assert main(["demo", "--device", "banana"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deepclust: error:") and "is not a device" in err
