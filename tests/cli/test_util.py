"""What the commands share: name lists, the device check, the progress switch, the JSON
target."""
import pytest

from deepclust.cli import _util
from deepclust.cli._util import CLIError


def test_names_split_repeat_and_dedupe():
    assert _util.names(["a,b", " c ", "a,,"], "op", ["a", "b", "c"]) == ["a", "b", "c"]
    assert _util.names(None, "op", ["a"]) == []
    with pytest.raises(CLIError, match="unknown op 'x'; choose from a, b"):
        _util.names(["a,x"], "op", ["a", "b"])


@pytest.mark.parametrize("device,msg", [("banana", "is not a device"), ("meta", "only cpu and cuda")])
def test_check_device_errors(device, msg):
    with pytest.raises(CLIError, match=msg):
        _util.check_device(device)


def test_check_device_cpu():
    assert _util.check_device("cpu").type == "cpu"


def test_progress_only_on_a_terminal(monkeypatch):
    class Stderr:
        def __init__(self, tty):
            self.tty = tty

        def isatty(self):
            return self.tty

    monkeypatch.setattr(_util.sys, "stderr", Stderr(True))
    assert _util.progress_on() and not _util.progress_on(True)
    monkeypatch.setattr(_util.sys, "stderr", Stderr(False))
    assert not _util.progress_on()


def test_json_target_needs_the_folder(tmp_path):
    _util.json_target(None)
    _util.json_target(str(tmp_path / "x.json"))
    with pytest.raises(CLIError, match="does not exist"):
        _util.json_target(str(tmp_path / "no" / "x.json"))


def test_write_json(tmp_path):
    p = tmp_path / "x.json"
    _util.write_json(p, {"a": 1})
    assert p.read_text() == '{\n  "a": 1\n}'
