"""Outputs are published without losing what appeared or changed meanwhile, and temporaries of
crashed runs are removed by the next writer, never a live one's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iounet import staging
from iounet.cli import main
from iounet.files import Output, check_output, write_json
from iounet.staging import OutputConflict, is_temporary, publish, remove_stale, temporary_name


@pytest.fixture(params=["renameat2", "fallback"])
def rename_support(request, monkeypatch):
    """Both ways of publishing: with renameat2 and, as on systems without it, plain renames."""
    if request.param == "fallback":
        monkeypatch.setattr(staging, "_renameat2_function", lambda: None)
    return request.param


def _accept_any(path: Path) -> bool:
    return True


def _staged_file(target: Path, text: str) -> Path:
    path = temporary_name(target)
    path.write_text(text)
    return path


def test_a_file_that_appeared_meanwhile_is_kept_and_the_result_set_aside(tmp_path, rename_support):
    target = tmp_path / "results.json"
    output = check_output(target, False, _accept_any, "results file")
    target.write_text("thesis")  # appears while the command runs
    with pytest.raises(OutputConflict, match="appeared or changed") as raised:
        publish(_staged_file(target, "ours"), target, output.replaces)
    assert target.read_text() == "thesis"
    kept = tmp_path / "results.json.new"
    assert str(kept) in str(raised.value) and kept.read_text() == "ours"


def test_a_file_checked_with_force_is_replaced_only_while_unchanged(tmp_path, rename_support):
    target = tmp_path / "results.json"
    target.write_text("old")
    output = check_output(target, True, _accept_any, "results file")
    publish(_staged_file(target, "new"), target, output.replaces)
    assert target.read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]

    output = check_output(target, True, _accept_any, "results file")
    target.write_text("edited meanwhile, same size" * 2)
    with pytest.raises(OutputConflict):
        publish(_staged_file(target, "newer"), target, output.replaces)
    assert target.read_text() == "edited meanwhile, same size" * 2
    assert (tmp_path / "results.json.new").read_text() == "newer"


def test_a_folder_that_appeared_meanwhile_is_kept_even_when_empty(tmp_path, rename_support):
    target = tmp_path / "model"
    for content in ({"t.tex": "thesis"}, {}):
        output = check_output(target, False, _accept_any, "model folder", folder=True)
        target.mkdir()
        for name, text in content.items():
            (target / name).write_text(text)
        staged = temporary_name(target)
        staged.mkdir()
        (staged / "manifest.json").write_text("{}")
        with pytest.raises(OutputConflict):
            publish(staged, target, output.replaces)
        assert sorted(p.name for p in target.iterdir()) == sorted(content)
        kept = tmp_path / "model.new"
        assert (kept / "manifest.json").is_file()
        for path in (target, kept):
            for entry in path.iterdir():
                entry.unlink()
            path.rmdir()


def test_a_folder_replaced_with_force_loses_nothing_added_meanwhile(tmp_path, rename_support):
    target = tmp_path / "model"
    target.mkdir()
    (target / "manifest.json").write_text("old")
    output = check_output(target, True, _accept_any, "model folder", folder=True)
    (target / "t.tex").write_text("thesis")  # written into it while the command runs
    staged = temporary_name(target)
    staged.mkdir()
    (staged / "manifest.json").write_text("new")
    with pytest.raises(OutputConflict):
        publish(staged, target, output.replaces)
    assert (target / "t.tex").read_text() == "thesis"
    assert (target / "manifest.json").read_text() == "old"
    (target / "t.tex").unlink()
    output = check_output(target, True, _accept_any, "model folder", folder=True)
    staged = temporary_name(target)
    staged.mkdir()
    (staged / "manifest.json").write_text("new")
    publish(staged, target, output.replaces)
    assert (target / "manifest.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "model.new"]


def test_an_output_removed_meanwhile_is_simply_written(tmp_path, rename_support):
    target = tmp_path / "report.json"
    target.write_text("{}")
    output = check_output(target, True, _accept_any, "report")
    target.unlink()
    write_json(output, {"a": 1})
    assert target.read_text() == '{"a": 1}'


def test_an_error_inside_the_block_leaves_the_output_and_no_temporary(tmp_path):
    target = tmp_path / "model"
    output = check_output(target, False, _accept_any, "model folder", folder=True)
    with pytest.raises(KeyboardInterrupt), output.staged() as staged:
        (staged / "graph.onnx").write_text("part")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    assert isinstance(Output(target), Output)


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_only_the_temporaries_of_dead_processes_of_this_machine_are_removed(tmp_path):
    mine = temporary_name(tmp_path / "model")
    mine.mkdir()
    dead = Path(
        str(temporary_name(tmp_path / "model")).replace(f"-{os.getpid()}-", f"-{_dead_pid()}-")
    )
    (dead / "sub").mkdir(parents=True)
    other_host = tmp_path / ".model.iounet-00000000-1-1-abcd.tmp"
    other_host.write_text("another machine's run on a shared file system")
    users = tmp_path / ".model.tmp"
    users.write_text("not ours")
    assert all(is_temporary(p.name) for p in (mine, dead, other_host))
    assert not is_temporary(users.name)
    assert remove_stale(tmp_path) == [dead]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        p.name for p in (mine, other_host, users)
    )


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from tiny_model import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "last.pt")


def test_a_killed_export_leaves_a_temporary_the_next_export_removes(tmp_path, tiny_checkpoint):
    out = tmp_path / "model"
    process = subprocess.Popen(
        [sys.executable, "-m", "iounet.cli", "export", str(tiny_checkpoint), "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not any(is_temporary(p.name) for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    left = [p for p in tmp_path.iterdir() if is_temporary(p.name)]
    assert len(left) == 1 and not out.exists()
    assert main(["export", str(tiny_checkpoint), "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_export_does_not_destroy_a_folder_that_appears_while_it_runs(
    tmp_path, tiny_checkpoint, monkeypatch, capsys
):
    from iounet.export import onnx_export

    out = tmp_path / "model"
    real = onnx_export._export_graphs

    def export_graphs(*args, **kwargs):
        out.mkdir(exist_ok=True)
        (out / "t.tex").write_text("thesis")
        return real(*args, **kwargs)

    monkeypatch.setattr(onnx_export, "_export_graphs", export_graphs)
    assert main(["export", str(tiny_checkpoint), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert "appeared or changed while this command ran" in error and "model.new" in error
    assert [p.name for p in out.iterdir()] == ["t.tex"]
    assert (tmp_path / "model.new" / "manifest.json").is_file()
