"""Bad input to `iounet train` (and the other commands with --device): one line on stderr and
exit status 2 before any work; Ctrl-C: one line and 130."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from iounet.cli import main
from iounet.training import commands
from iounet.training.config import RECIPES, TrainConfig, load_config
from iounet.training.synthetic import generate_synthetic_dataset
from iounet.training.trainer import Trainer

#: A tiny IoU-Net run (its own trainable backbone), section by section.
TINY = {
    "": {"recipe": '"cpu-demo"', "checkpoint_every": "2"},
    "model": {"fpn_channels": "8", "head_dim": "16", "frozen_backbone": "false"},
    "data": {"min_size": "64", "max_size": "64", "boxes_per_image": "8", "num_workers": "0"},
    "optim": {"batch_size": "2", "steps": "2", "warmup_steps": "1", "lr_steps": "[1]"},
}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synthetic") / "data"
    generate_synthetic_dataset(out, train=2, val=1, size=64, seed=0)
    return out


def _config(tmp_path: Path, **changes: dict[str, str]) -> Path:
    """The TINY config with `changes` (section -> key -> TOML value) written to a file."""
    sections = {name: {**values, **changes.get(name or "top", {})} for name, values in TINY.items()}
    for name, values in changes.items():
        if name != "top":
            sections.setdefault(name, values)
    lines = [f"{key} = {value}" for key, value in sections.pop("").items()]
    for name, values in sections.items():
        lines += [f"[{name}]", *(f"{key} = {value}" for key, value in values.items())]
    path = tmp_path / "run.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(data: Path, out: Path, config: Path | None, *extra: str) -> list[str]:
    arguments = ["train", "--data", str(data), "--out", str(out), "--no-progress", *extra]
    return arguments + (["--config", str(config)] if config is not None else [])


def _one_line(capsys, command: str = "train") -> str:
    """The single line on stderr, which must be the command's error line."""
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert error.count("\n") == 1 and error.startswith(f"iounet {command}: "), error
    return error


@pytest.mark.parametrize("steps", [0, -1])
def test_steps_below_one_are_refused(data, tmp_path, capsys, steps):
    config = _config(tmp_path, optim={"steps": str(steps)})
    out = tmp_path / "run"
    assert main(_train(data, out, config)) == 2
    assert f"optim.steps must be >= 1, got {steps}" in _one_line(capsys)
    assert not out.exists()


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"optim": {"steps": '"2"'}}, "optim.steps must be an integer, got '2'"),
        ({"optim": {"batch_size": "true"}}, "optim.batch_size must be an integer, got True"),
        ({"optim": {"lr": '"0.1"'}}, "optim.lr must be a number, got '0.1'"),
        ({"optim": {"lr": "nan"}}, "optim.lr must be a finite number, got nan"),
        ({"optim": {"lr": "0"}}, "optim.lr must be > 0, got 0.0"),
        ({"optim": {"lr_steps": '[1, "x"]'}}, "optim.lr_steps[1] must be an integer, got 'x'"),
        ({"optim": {"lr_steps": "1"}}, "optim.lr_steps must be a list of integers, got 1"),
        ({"optim": {"lr_steps": "[3, 2]"}}, "optim.lr_steps must be increasing, got (3, 2)"),
        ({"optim": {"batch_size": "0"}}, "optim.batch_size must be >= 1, got 0"),
        ({"optim": {"step": "3"}}, "unknown key(s) in [optim]: 'step' (did you mean 'steps'?)"),
        ({"data": {"min_iou": "1.5"}}, "data.min_iou must be in [0, 1), got 1.5"),
        ({"data": {"flip": "1"}}, "data.flip must be true or false, got 1"),
        ({"model": {"head_dim": "16.0"}}, "model.head_dim must be an integer, got 16.0"),
        ({"model": {"head_dim": "0"}}, "model: head_dim must be positive, got 0"),
        ({"detector": {"aspect_ratios": '["wide"]'}}, "detector.aspect_ratios[0] must be a num"),
        ({"top": {"seed": "-1"}}, "seed must be in [0, 2**32), got -1"),
        ({"top": {"checkpoint_every": "0"}}, "checkpoint_every must be >= 1, got 0"),
        ({"top": {"sed": "1"}}, "unknown key(s) in the config: 'sed' (did you mean 'seed'?)"),
    ],
)
def test_wrong_types_and_ranges_name_the_field(data, tmp_path, capsys, changes, message):
    path = _config(tmp_path, **changes)
    out = tmp_path / "run"
    assert main(_train(data, out, path)) == 2
    error = _one_line(capsys)
    assert message in error and str(path) in error
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("optim = 3\n", "optim must be a table ([optim]), got 3"),
        ('recipe = ["cpu-demo"]\n', "unknown recipe ['cpu-demo']"),
        ("[optim]\nsteps = 2\n[optim]\n", "is not valid TOML"),
    ],
)
def test_malformed_files_are_one_line(data, tmp_path, capsys, text, message):
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert main(_train(data, tmp_path / "run", path)) == 2
    assert message in _one_line(capsys)


def test_every_recipe_validates_and_numbers_widen_to_floats(tmp_path):
    for name, recipe in RECIPES.items():
        assert load_config(None, name) == recipe
        assert TrainConfig.from_dict(recipe.to_dict()) == recipe
    config = load_config(_config(tmp_path, optim={"lr": "1"}, detector={"aspect_ratios": "[1]"}))
    assert config.optim.lr == 1.0 and isinstance(config.optim.lr, float)
    assert config.detector.aspect_ratios == (1.0,)
    assert config.optim.lr_steps == (1,)


def _no_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _one_gpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)


@pytest.mark.parametrize(
    ("device", "machine", "message"),
    [
        ("banana", _no_gpu, "--device banana: not a device; use cpu, cuda or cuda:N"),
        ("cuda:x", _one_gpu, "--device cuda:x: not a device"),
        ("cuda", _no_gpu, "--device cuda: this machine has no CUDA GPU"),
        ("cuda:0", _no_gpu, "torch.cuda.is_available() is False"),
        ("cuda:1", _one_gpu, "--device cuda:1: this machine has 1 CUDA GPU (cuda:0)"),
    ],
)
def test_train_checks_the_device_first(
    data, tmp_path, capsys, monkeypatch, device, machine, message
):
    machine(monkeypatch)
    built = []
    monkeypatch.setattr(Trainer, "__init__", lambda *args, **kwargs: built.append(args))
    out = tmp_path / "run"
    assert main(_train(data, out, _config(tmp_path), "--device", device)) == 2
    assert message in _one_line(capsys)
    assert not built and not out.exists()


def test_every_device_option_is_checked(data, tmp_path, capsys, monkeypatch):
    _no_gpu(monkeypatch)
    val = data / "val"
    images, annotations = str(val / "images"), str(val / "annotations.json")
    checkpoint, out = str(tmp_path / "absent.pt"), tmp_path / "out.json"
    model = ["--checkpoint", checkpoint, "--images", images, "--annotations", annotations]
    runs = {
        "train-detector": ["--data", str(data), "--out", str(tmp_path / "run")],
        "detect": [*model, "--out", str(out)],
        "eval": [*model, "--json", str(out)],
    }
    for command, arguments in runs.items():
        assert main([command, *arguments, "--device", "cuda"]) == 2
        assert "--device cuda: this machine has no CUDA GPU" in _one_line(capsys, command)
    assert not out.exists() and not (tmp_path / "run").exists()


def test_an_existing_run_is_one_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"an earlier run")
    assert main(_train(data, out, _config(tmp_path))) == 2
    error = _one_line(capsys)
    assert str(out / "last.pt") in error and "--resume" in error
    assert (out / "last.pt").read_bytes() == b"an earlier run"


def test_resume_without_a_run_is_one_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_train(data, out, _config(tmp_path), "--resume")) == 2
    assert "--resume" in _one_line(capsys) and not out.exists()


def test_ctrl_c_is_one_line_and_130(tmp_path, capsys, monkeypatch):
    def interrupted(args) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "_synth", interrupted)
    out = tmp_path / "data"
    assert main(["data", "synth", "--out", str(out)]) == 130
    assert capsys.readouterr().err == "iounet data: interrupted\n"
    assert not out.exists()


def test_ctrl_c_in_training_names_the_step(data, tmp_path, capsys, monkeypatch):
    def interrupted(self, progress: bool = True) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "run", interrupted)
    out = tmp_path / "run"
    assert main(_train(data, out, _config(tmp_path))) == 130
    error = _one_line(capsys)
    assert "interrupted at step 0; no checkpoint written" in error
    assert not (out / "last.pt").exists()
