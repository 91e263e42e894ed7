"""``deepclust adapt``: its argument errors (one line, naming the argument) and one real run on
the shared digit sets (``data``)."""
import json

import pytest

from deepclust.cli import main


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.mark.parametrize("args,msg", [
    (["adapt", "shot", "--source", "usps", "--target", "mnist-test"], "unknown method"),
    (["adapt", "tsd", "--source", "cora", "--target", "usps"], "--source must be an image set"),
    (["adapt", "tsd", "--source", "usps", "--target", "pendigits"], "--target must be an image set"),
    (["adapt", "tsd", "--source", "usps", "--target", "usps"], "the same data set"),
    (["adapt", "tsd", "--source", "usps", "--target", "digits", "--epochs", "0"], "--epochs"),
    (["adapt", "tsd", "--source", "usps", "--target", "digits", "--batch-size", "0"], "--batch-size"),
    (["adapt", "tsd", "--source", "usps", "--target", "digits", "--lr", "-1"], "--lr"),
    (["adapt", "tsd", "--source", "usps", "--target", "digits", "--filter-k", "0"], "--filter-k"),
    (["adapt", "tsd", "--source", "usps", "--target", "digits", "--lam", "-0.5"], "--lam"),
    (["adapt", "tsd", "--source", "usps", "--target", "digits", "--json", "/no/such/dir/x.json"], "--json"),
])
def test_errors_are_one_line(args, msg, capsys):
    rc, _, err = _run(args, capsys)
    assert rc == 2
    assert msg in err and err.count("\n") == 1


def test_missing_root_names_the_file(tmp_path, capsys):
    rc, _, err = _run(["adapt", "tsd", "--source", "mnist-test", "--target", "usps",
                       "--root", str(tmp_path)], capsys)
    assert rc == 2 and "mnist" in err


@pytest.mark.data
@pytest.mark.slow
def test_usps_to_digits_json(data_root, tmp_path, capsys):
    out = tmp_path / "r.json"
    rc, text, _ = _run(["adapt", "tsd", "--source", "usps", "--target", "digits", "--root",
                        str(data_root), "--epochs", "1", "--json", str(out)], capsys)
    assert rc == 0 and "adapted ACC" in text
    res = json.loads(out.read_text())
    assert res["source"] == "usps" and res["target"] == "digits" and res["n_target"] == 1797
    assert res["acc_source"] > 0.8  # one epoch on USPS already classifies its own images
    assert 0.0 <= res["acc_source_only"] <= 1.0 and 0.0 <= res["acc"] <= 1.0
