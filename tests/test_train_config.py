"""Training settings without training: presets, config files, flag checks, and ``--help``."""

import json
import os
import platform
import re
import subprocess
import sys

import pytest

from em_keras.cli.train import EIGEN_MODELS, build_parser, config_from_argv
from em_keras.cli.train import main as train_main
from em_keras.config import (COMMON_FLAGS, PRESETS, TrainConfig, load_config_file, resolve_config,
                             save_config_file)
from em_keras.errors import InputError, run_cli
from em_keras.models.registry import MODELS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --------------------------------------------------------------------------- --help


def _flags(help_text):
    return sorted(set(re.findall(r"^  (-h|--[a-z-]+)", help_text, re.M)))


@pytest.mark.parametrize("model", ["unet", "unetpp", "fcn"])
def test_help_has_at_most_25_flags_in_groups_each_with_help(model):
    text = build_parser(model).format_help()
    flags = _flags(text)
    assert "--out" in flags and "--preset" in flags and "--config" in flags and len(flags) <= 25, flags
    groups = re.findall(r"^(\w+):$", text, re.M)
    assert groups == ["options", "data", "model", "optimisation", "augmentation", "output"]
    parser = build_parser(model)
    for action in parser._actions:  # every flag explains itself, and none shows "(default: None)"
        assert action.help and len(action.help) > 10, action.option_strings
    assert "default: None" not in text and "(default: none)" not in text
    for key in ("optimizer", "momentum", "tta"):  # the settings left to a config file, with their values
        assert f'"{key}":' in text


def test_help_shows_the_chosen_presets_values():
    cpu = build_parser("unet", preset="cpu").format_help()
    paper = build_parser("unet", preset="paper").format_help()
    assert "(cpu preset: 0.002)" in re.sub(r"\s+", " ", cpu)
    assert "(paper preset: 1e-05)" in re.sub(r"\s+", " ", paper)
    assert "whole slices resized to 512" in re.sub(r"\s+", " ", paper)


def test_help_through_the_command_line_follows_preset(capsys):
    with pytest.raises(SystemExit) as stop:
        train_main(["unetpp", "--preset", "paper", "--help"])
    assert stop.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert "usage: em-keras train unetpp" in text and "(paper preset: 0.1)" in text
    assert run_cli(train_main, ["--help"]) == 0
    assert "fcn" in capsys.readouterr().out
    assert run_cli(train_main, ["resnet"]) == 2
    assert "unknown model 'resnet'" in capsys.readouterr().err


def test_removed_research_toggles_are_gone():
    names = {f for f in TrainConfig.__dataclass_fields__}
    assert not {"context", "affine", "extra"} & names
    assert "paper-focal" not in PRESETS["fcn"]
    for model in MODELS:
        with pytest.raises(InputError, match="unrecognized arguments: --context"):
            config_from_argv(model, ["--context", "1", "--out", "x"])
    import em_keras.training.loop as loop

    assert not hasattr(loop, "memorised_note") and not hasattr(loop, "MEMORISED_GAP")


def test_the_registry_holds_no_cpu_kernel_choice():
    assert all("onednn" not in entry for entry in MODELS.values())
    assert EIGEN_MODELS == {"fcn"}


X86 = platform.machine().lower() in ("x86_64", "amd64")


@pytest.mark.parametrize("model, expected", [("fcn", "0"), ("unet", "1" if X86 else "None")])
def test_the_train_command_picks_the_cpu_kernels_before_tensorflow_loads(model, expected):
    code = (f"import os, sys\nfrom em_keras.cli.train import main\n"
            f"try:\n    main([{model!r}, '--help'])\nexcept SystemExit:\n    pass\n"
            f"print(os.environ.get('TF_ENABLE_ONEDNN_OPTS'), 'tensorflow' in sys.modules)")
    env = {k: v for k, v in os.environ.items() if k not in ("TF_ENABLE_ONEDNN_OPTS", "EM_KERAS_ONEDNN_AUTO")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[-2:] == [expected, "False"]  # and --help never loads TensorFlow


# --------------------------------------------------------------------------- values and checks


@pytest.mark.parametrize("key, value, message", [
    ("weight_decay", float("nan"), "weight_decay nan: must be a finite number"),
    ("lr", float("inf"), "--lr inf: must be a finite number"),
    ("momentum", float("inf"), "momentum inf: must be a finite number"),
    ("momentum", 1.0, r"momentum must be in \[0, 1\)"),
    ("dropout", float("nan"), "dropout nan"),
    ("brightness", float("nan"), "--brightness nan"),
    ("contrast", -0.1, r"--contrast must be in \[0, 1\)"),
    ("elastic", float("inf"), "elastic inf"),
    ("border_weight", float("nan"), "border_weight nan"),
    ("threshold", 1.5, r"threshold must be in \(0, 1\)"),
    ("lr", "fast", "--lr must be a number"),
    ("epochs", 2.5, "--epochs must be an integer"),
    ("augment", "yes", "--augment must be true or false"),
])
def test_every_float_setting_must_be_finite_and_in_range(key, value, message):
    with pytest.raises(InputError, match=message):
        resolve_config(TrainConfig(**{key: value}))


@pytest.mark.parametrize("argv, message", [
    (["--lr", "inf"], "--lr inf: must be a finite number"),
    (["--lr", "nan"], "--lr nan: must be a finite number"),
    (["--brightness", "nan"], "--brightness nan"),
    (["--contrast", "inf"], "--contrast inf"),
])
def test_float_flags_are_checked_before_anything_runs(tmp_path, argv, message, capsys):
    out = tmp_path / "o"
    assert run_cli(train_main, ["unet", "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert re.search(message, err) and err.count("\n") == 1
    assert not out.exists()


# --------------------------------------------------------------------------- config files


def test_precedence_is_preset_then_config_file_then_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"lr": 0.01, "optimizer": "sgd", "filters": 8, "size": 64}))
    cfg, config_path = config_from_argv("unet", ["--config", str(path), "--filters", "6", "--out", "o"])
    cfg = resolve_config(cfg)
    assert config_path == str(path)
    assert (cfg.lr, cfg.optimizer, cfg.filters, cfg.depth) == (0.01, "sgd", 6, 4)  # file, file, flag, preset
    assert (cfg.crop, cfg.size) == (None, 64)  # the file's size beats the preset's crop ...
    cfg = resolve_config(config_from_argv("unet", ["--config", str(path), "--crop", "32", "--out", "o"])[0])
    assert (cfg.crop, cfg.size) == (32, None)  # ... and a --crop flag beats the file's size
    paper = resolve_config(config_from_argv("unet", ["--preset", "paper", "--out", "o"])[0])
    assert (paper.lr, paper.filters) == (1e-5, 64)


def test_a_run_json_is_a_config_file(tmp_path):
    cfg = resolve_config(TrainConfig(model="unetpp", filters=4, depth=2, crop=32, lr=3e-4, out="old", resume=True))
    run = {"config": dict(cfg.__dict__, affine=True, context=0), "status": "done"}  # an older run's keys, off
    (tmp_path / "run.json").write_text(json.dumps(run))
    again, _ = config_from_argv("unetpp", ["--config", str(tmp_path / "run.json"), "--out", "new"])
    again = resolve_config(again)
    assert again == resolve_config(TrainConfig(**dict(cfg.__dict__, out="new", resume=False)))
    with pytest.raises(InputError, match="holds settings of a unetpp run; use 'em-keras train unetpp'"):
        config_from_argv("unet", ["--config", str(tmp_path / "run.json"), "--out", "new"])
    save_config_file(tmp_path / "saved.json", cfg)
    saved = load_config_file(str(tmp_path / "saved.json"))
    assert saved["lr"] == 3e-4 and not {"out", "resume", "overwrite"} & set(saved)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"learning_rate": 0.1}', "unknown setting 'learning_rate'"),
    ('{"context": 2}', "setting 'context' was removed"),
    ('{"weight_decay": NaN}', "weight_decay nan: must be a finite number"),
    ('{"optimizer": "adagrad"}', "optimizer must be one of adam, adamw, sgd"),
])
def test_bad_config_files_are_one_line_errors(tmp_path, content, message, capsys):
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert run_cli(train_main, ["unet", "--config", str(path), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    assert run_cli(train_main, ["unet", "--config", str(tmp_path / "missing.json"), "--out", "o"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_common_flags_are_fields():
    fields = set(TrainConfig.__dataclass_fields__)
    assert set(COMMON_FLAGS) <= fields
    assert all(set(entry["flags"]) <= fields for entry in MODELS.values())
