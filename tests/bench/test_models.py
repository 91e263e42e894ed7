"""``bench/models.py``: its command list is the recorded results, file for file, and every
command is one the command line accepts."""
from pathlib import Path

from bench import models as M
from deepclust.cli import _parser


def test_commands_are_the_recorded_files(tmp_path):
    todo = M.commands()
    want = {p.name for p, _ in todo}
    have = {p.name for p in M.OUT.glob("*.json")}
    assert want == have, (sorted(want - have), sorted(have - want))
    assert len(M.commands(["daegc_cora"])) == 5 and len(M.commands(["usps"])) == 21  # 5 fits + 2 adaptations, 3 seeds
    out = M.commands(["kmeans_usps"], out=tmp_path, root=Path("/data"))
    assert [p for p, _ in out] == [tmp_path / f"kmeans_usps_seed{s}.json" for s in range(3)]


def test_commands_parse():
    for path, argv in M.commands():
        args = _parser().parse_args(argv)
        assert args.json == str(path) and args.seed == int(path.stem.rsplit("seed", 1)[1])


def test_list_prints_every_command(capsys):
    assert M.main(["--list", "--only", "tsd_"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 6 and all(line.startswith("deepclust adapt tsd --source") for line in lines)
