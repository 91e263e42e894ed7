"""``deepclust bench``: the benchmark scripts from the command line write CSV rows, PNG plots
(matplotlib) and a markdown table into --out; bad input is one line; plots of several sizes."""
import csv
import json
import sys
from pathlib import Path

import pytest
import torch

from deepclust.cli import _bench, main


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_quick_bench_writes_csv_png_markdown(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "b"  # created by the command
    args = ["bench", "--ops", "dec", "--quick", "--device", "cpu", "--out", str(out),
            "--provider", "deepclust-torch", "--provider", "reference", "--in-process",
            "--no-progress"]
    rc, stdout, _ = _run(args, capsys)
    assert rc == 0, stdout
    rows = _rows(out / "dec.csv")
    assert {r["provider"] for r in rows} == {"deepclust-torch", "reference"}
    assert all(r["status"] == "ok" and float(r["median_ms"]) > 0 for r in rows)
    pngs = list(out.glob("*.png"))
    assert len(pngs) == 1 and pngs[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (out / "bench.md").read_text()
    assert "| `dec_loss` | full | float32 | N=256, K=10, d=10 |" in md
    assert f"**{rows[0]['device']}**" in md
    assert "bench: 1 CSV, 1 PNG" in stdout


def _fake_main(calls):
    """Stands in for bench.common.main: one row per call, no measurement."""
    import bench.common as common

    def fake(name, cases, argv):
        calls.append((name, argv))
        out = common._output_path(argv[argv.index("--out") + 1], name)
        row = {c: "" for c in common.COLUMNS}
        row.update(timestamp=f"2026-01-01T00:00:0{len(calls)}+00:00", op=name, provider="reference",
                   mode="fwd", sizes=json.dumps({"N": 100 * len(calls)}), dtype="float32",
                   median_ms=f"{len(calls)}.5", peak_mb="1.0", status="ok", device="cpu (fake)")
        common.append_rows(out, [row])
        return [row]

    return fake


def test_rows_append_and_without_matplotlib_the_rest_still_works(tmp_path, monkeypatch, capsys):
    import bench.common

    calls = []
    monkeypatch.setattr(bench.common, "main", _fake_main(calls))
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    args = ["bench", "--ops", "sinkhorn,kmeans", "--quick", "--out", str(tmp_path), "--no-progress"]
    for _ in range(2):
        rc, stdout, err = _run(args, capsys)
        assert rc == 0
        assert "matplotlib is not installed" in err
    assert [n for n, _ in calls] == ["sinkhorn", "kmeans", "sinkhorn", "kmeans"]
    default = "cuda" if torch.cuda.is_available() else "cpu"  # bench's --device default
    assert "--quick" in calls[0][1] and calls[0][1][calls[0][1].index("--device") + 1] == default
    assert len(_rows(tmp_path / "sinkhorn.csv")) == 2  # appended, not overwritten
    assert not list(tmp_path.glob("*.png"))
    md = (tmp_path / "bench.md").read_text()
    assert "`kmeans`" in md and "`sinkhorn`" in md


def test_budget_is_shared_between_scripts(tmp_path, monkeypatch, capsys):
    import bench.common

    calls = []
    monkeypatch.setattr(bench.common, "main", _fake_main(calls))
    rc, _, _ = _run(["bench", "--ops", "dec", "--ops", "recon", "--out", str(tmp_path),
                     "--max-seconds", "100", "--no-plot", "--no-progress"], capsys)
    assert rc == 0
    first = calls[0][1]
    assert 45 <= float(first[first.index("--max-seconds") + 1]) <= 50


def test_a_crashing_script_is_reported_and_the_others_run(tmp_path, monkeypatch, capsys):
    import bench.common

    calls = []
    fake = _fake_main(calls)

    def crash_dec(name, cases, argv):
        if name == "dec":
            raise RuntimeError("no luck")
        return fake(name, cases, argv)

    monkeypatch.setattr(bench.common, "main", crash_dec)
    rc, _, err = _run(["bench", "--ops", "dec,recon", "--out", str(tmp_path), "--no-plot",
                       "--no-progress"], capsys)
    assert rc == 1 and "bench.dec crashed: RuntimeError: no luck" in err
    assert [n for n, _ in calls] == ["recon"] and (tmp_path / "recon.csv").is_file()


def test_plots_log_axes_one_line_per_provider(tmp_path):
    pytest.importorskip("matplotlib")
    import bench.common
    import bench.plot

    rows = []
    for n in (1000, 10000, 100000):
        for prov, ms in (("deepclust-torch", n / 1e3), ("reference", n / 5e2)):
            row = {c: "" for c in bench.common.COLUMNS}
            row.update(op="dec_loss", provider=prov, mode="full", dtype="float32", status="ok",
                       sizes=json.dumps({"K": 10, "N": n, "d": 8}), median_ms=str(ms),
                       p20_ms=str(ms), p80_ms=str(ms), peak_mb=str(ms), device="cpu (t)")
            rows.append(row)
    rows.append({**rows[0], "sizes": json.dumps({"K": 64, "N": 1000, "d": 8})})  # another K
    bench.common.append_rows(tmp_path / "dec.csv", rows)
    groups = bench.plot.groups(bench.common.read_rows(tmp_path / "dec.csv"))
    keys = sorted(groups, key=str)
    assert [k[5] for k in keys] == ["N", "N"]  # x axis: the size that varies most
    k10 = next(k for k in keys if ("K", 10) in k[4])
    assert sorted(groups[k10]) == ["deepclust-torch", "reference"]
    assert [x for x, _ in groups[k10]["reference"]] == [1000, 10000, 100000]
    pngs = bench.plot.plot(tmp_path / "dec.csv", tmp_path / "png")
    assert len(pngs) == 2 and all(p.is_file() for p in pngs)


@pytest.mark.parametrize(
    "args,msg",
    [
        (["bench", "--ops", "nope"], "unknown benchmark 'nope'"),
        (["bench", "--ops", "dec", "--device", "banana"], "is not a device"),
        (["bench", "--ops", "dec", "--device", "cuda:9"], "--device 'cuda:9'"),
        (["bench", "--ops", "dec", "--max-seconds", "0"], "--max-seconds must be > 0"),
    ],
    ids=["op", "device-name", "device-absent", "budget"],
)
def test_errors_are_one_line(args, msg, capsys):
    rc, _, err = _run(args, capsys)
    assert rc == 2 and err.startswith("deepclust: error:") and msg in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_out_is_a_file(tmp_path, capsys):
    f = tmp_path / "x.txt"
    f.write_text("")
    rc, _, err = _run(["bench", "--ops", "dec", "--out", str(f)], capsys)
    assert rc == 2 and "is a file, not a folder" in err


def test_bench_folder_missing_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(_bench, "__file__",
                        str(tmp_path / "site-packages" / "deepclust" / "cli" / "_bench.py"))
    rc, _, err = _run(["bench", "--ops", "dec"], capsys)
    assert rc == 2 and "run deepclust bench from the repository root" in err


def test_from_another_folder_the_scripts_beside_the_package_are_found(tmp_path, monkeypatch):
    """An editable install run outside the repository finds bench/ two folders above this
    module (deepclust/cli/_bench.py)."""
    monkeypatch.chdir(tmp_path)
    common, run_all = _bench._import_bench()
    repo = Path(_bench.__file__).resolve().parents[2]
    assert Path(common.__file__).resolve() == repo / "bench" / "common.py"
    assert "dec" in run_all.SCRIPTS
