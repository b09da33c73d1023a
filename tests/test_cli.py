"""Bad input to every command line: one line, the right exit code, no traceback, nothing written.

The cases live in ``tests/bad_inputs.py`` (one row per command line, also
rendered into docs/reliability.md by ``python tests/bad_inputs.py --markdown``).
Each runs in-process through :func:`run_cli` and must exit 2 with a single
``error: ...`` line naming the file or flag, no traceback, and leave every file
of the fixture folder as it was: no output, temporary or lock file, and no
existing output touched. A few real subprocesses check the same from the shell,
and that ``--debug`` brings the traceback back.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile

from bad_inputs import CASES, case_id, make_files, markdown, problems, run_case
from em_keras.cli.crf import main as crf_main
from em_keras.cli.main import COMMANDS
from em_keras.cli.main import main as em_main
from em_keras.data import io as data
from em_keras.data.probs import load_probs
from em_keras.errors import InputError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def f(tmp_path_factory):
    """The good and bad input files of :func:`bad_inputs.make_files`, as a dict of paths."""
    files = make_files(tmp_path_factory.mktemp("cli"))
    yield files
    files["_lock_handle"].close()


def _param(case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case_id(case), marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_gives_one_line_and_nothing_written(case, f):
    result = run_case(case, f)
    assert not problems(case, result, f), (result.err, problems(case, result, f))


def _first_per_command():
    seen = {}
    for case in CASES:
        seen.setdefault(case.command.split()[0] if case.command else "", case)
    return list(seen.values())


@pytest.mark.parametrize("case", _first_per_command(), ids=case_id)
def test_debug_raises_the_input_error(case, f):
    result = run_case(case, f, debug=True)
    assert isinstance(result.exception, InputError), result
    assert not result.changed


def test_the_table_covers_every_command_and_is_wide():
    commands = {c.command.split()[0] for c in CASES if c.command}
    assert commands == set(COMMANDS), commands ^ set(COMMANDS)
    assert {c.command for c in CASES} >= {"train unet", "train unetpp", "train fcn"}
    assert len(CASES) >= 150
    assert len({case_id(c) for c in CASES}) == len(CASES)  # ids are unique
    assert all(c.fragment and c.note for c in CASES)


def test_markdown_renders_the_exit_code_and_error_line(f):
    picked = [c for c in CASES if c.note in ("`--seed -5`", "`--offset 1e9,0`")][:2]
    table, bad = markdown(f, picked)
    lines = table.splitlines()
    assert lines[0].startswith("| command | bad input | exit |") and len(lines) == 2 + len(picked)
    assert "| `em-keras synth` | `--seed -5` | 2 | `error: --seed -5: must be >= 0` |" in lines
    assert not bad and f["dir"] not in table


def test_os_errors_are_one_line_exit_1(capsys):
    def broken(argv):
        raise PermissionError(13, "Permission denied", "/some/out.npy")

    assert run_cli(broken, []) == 1
    err = capsys.readouterr().err
    assert err == "error: [Errno 13] Permission denied: '/some/out.npy'\n"


def test_training_failures_and_ctrl_c_have_their_own_codes(capsys):
    from em_keras.errors import TrainingError

    def diverged(argv):
        raise TrainingError("the loss became NaN/inf at epoch 1, step 2")

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_cli(diverged, []) == 3
    assert capsys.readouterr().err == "training failed: the loss became NaN/inf at epoch 1, step 2\n"
    assert run_cli(interrupted, []) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_uint16_of_8_bit_values_is_read_as_8_bit_with_one_warning_line(f, tmp_path, capsys):
    u16 = tmp_path / "u16.tif"
    tifffile.imwrite(u16, tifffile.imread(f["vol"]).astype(np.uint16))
    argv = ["--probs", f["probs"], "--out-probs", "OUT", "--no-progress", "--iters", "1", "--jobs", "1"]
    fill = {"OUT": str(tmp_path / "a.npy")}
    assert run_cli(crf_main, [fill.get(a, a) for a in argv] + ["--images", f["vol"]]) == 0
    capsys.readouterr()
    fill = {"OUT": str(tmp_path / "b.npy")}
    assert run_cli(crf_main, [fill.get(a, a) for a in argv] + ["--images", str(u16)]) == 0
    err = capsys.readouterr().err
    lines = err.splitlines()  # (the second line warns about untuned CRF parameters)
    assert all(line.startswith("warning: ") for line in lines), err
    assert [line for line in lines if "16-bit" in line] == [
        f"warning: {u16}: 16-bit image holds only 8-bit values (max {int(tifffile.imread(u16).max())}); read as "
        "8-bit (divided by 255, not 65535); save it as uint8, or record its range in the TIFF MaxSampleValue tag"]
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), np.load(tmp_path / "a.npy"))


@pytest.mark.parametrize("images", ["vol16", "volf"])
def test_16bit_and_float_stacks_are_accepted_and_scaled(images, f, tmp_path, capsys):
    """uint16 = uint8 * 257 and float = uint8 / 255 are the same image: same CRF output."""
    def crf(stack, out):
        return run_cli(crf_main, ["--probs", f["probs"], "--images", f[stack], "--out-probs", str(out),
                                  "--no-progress", "--iters", "1", "--jobs", "1"])

    assert crf("vol", tmp_path / "ref.npy") == 0 and crf(images, tmp_path / "out.npy") == 0
    np.testing.assert_allclose(np.load(tmp_path / "out.npy"), np.load(tmp_path / "ref.npy"), atol=1e-5)
    np.testing.assert_array_equal(data.read_stack(f[images]), data.read_stack(f["vol"]))
    capsys.readouterr()


def test_loader_scaling(tmp_path):
    ramp = np.arange(2 * 4 * 4).reshape(2, 4, 4)
    cases = {
        "u8.tif": (ramp.astype(np.uint8), ramp / 255),
        "u16.tif": ((ramp * 1000).astype(np.uint16), ramp * 1000 / 65535),
        "i32.tif": (ramp.astype(np.int32), ramp / 255),  # fits 8 bits: /255
        "unit.tif": ((ramp / 31).astype(np.float32), ramp / 31),  # already in [0, 1]: kept
        "f.tif": ((ramp * 10 - 50).astype(np.float32), ramp / 31),  # other ranges: min-max
        "f64.npy": ((ramp * 3.0 + 7), ramp / 31),
    }
    for name, (arr, want) in cases.items():
        path = tmp_path / name
        np.save(path, arr) if name.endswith(".npy") else tifffile.imwrite(path, arr)
        got = data.read_stack(path)
        assert got.dtype == np.float32 and got.shape == (2, 4, 4), name
        np.testing.assert_allclose(got, want, atol=1e-6, err_msg=name)
    tifffile.imwrite(tmp_path / "lab01.tif", (ramp % 2).astype(np.float32))
    np.testing.assert_array_equal(data.read_labels(tmp_path / "lab01.tif"), ramp % 2)
    with pytest.raises(InputError, match="dtype"):
        tifffile.imwrite(tmp_path / "c.tif", np.zeros((2, 4, 4), np.complex64))
        data.read_labels(tmp_path / "c.tif")


def test_load_probs_accepts_layouts(f, tmp_path):
    probs = np.load(f["probs"])
    np.save(tmp_path / "p4.npy", probs[..., None].astype(np.float64))
    np.save(tmp_path / "p2.npy", probs[0])
    assert load_probs(str(tmp_path / "p4.npy")).shape == probs.shape
    assert load_probs(str(tmp_path / "p2.npy")).shape == (1,) + probs.shape[1:]


def test_synth_then_evaluate_round_trip(f, tmp_path, capsys):
    out = tmp_path / "syn"
    assert run_cli(em_main, ["synth", "--out", str(out), "--slices", "3", "--size", "16"]) == 0
    labels = data.read_labels(out / "train-labels.tif")
    np.save(tmp_path / "p.npy", labels.astype(np.float32))
    assert run_cli(em_main, ["evaluate", "--probs", str(tmp_path / "p.npy"), "--labels",
                             str(out / "train-labels.tif"), "--no-isbi", "--json", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["pixel_accuracy"] == 1.0
    assert oct(os.stat(tmp_path / "s.json").st_mode & 0o777) != "0o600"  # not mkstemp's private mode
    capsys.readouterr()


def test_a_savedmodel_runs_the_file_operations_its_graph_holds(f, tmp_path, capsys):
    """What docs/reliability.md says about trust: predicting with a SavedModel runs its graph, file ops included."""
    import tensorflow as tf

    secret, leak = tmp_path / "secret.txt", tmp_path / "leak.txt"
    secret.write_text("private")

    class Serve(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 1], tf.float32)])
        def serve(self, x):
            tf.io.write_file(str(leak), tf.io.read_file(str(secret)))
            return tf.sigmoid(x * 0.0)

    tf.saved_model.save(Serve(), str(tmp_path / "sm"))
    out = tmp_path / "p.npy"
    assert run_cli(em_main, ["predict", "--model", str(tmp_path / "sm"), "--images", f["vol"], "--out", str(out),
                             "--multiple", "4"]) == 0
    assert leak.read_text() == "private"  # the model read one file and wrote another
    np.testing.assert_allclose(np.load(out), 0.5)
    capsys.readouterr()


SUBPROCESS = [
    ([sys.executable, "train_unet.py", "--data", "{missing}", "--out", "{dir}/sub_out"], "not found"),
    ([sys.executable, "crf_refine.py", "--probs", "{probs}", "--images", "{rgb}", "--out", "{dir}/c.tif"], "RGB"),
    ([sys.executable, "-m", "em_keras", "predict", "--model", "{garbage_keras}", "--images", "{corrupt}",
      "--out", "{dir}/p.npy"], "cannot read"),  # and no tifffile warning line
]


@pytest.mark.parametrize("k", [pytest.param(0, marks=pytest.mark.slow), 1, 2])  # 0 imports TensorFlow
def test_shell_gets_one_line_and_no_traceback(k, f):
    cmd, needle = SUBPROCESS[k]
    cmd = [a.format(**f) for a in cmd]
    env = dict(os.environ)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the CLI itself keeps TensorFlow's start-up lines quiet
    r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and needle in r.stderr, r.stderr
    if k == 1:  # (crf_refine.py fails before TensorFlow is imported: quick)
        r = subprocess.run(cmd + ["--debug"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert r.returncode != 0 and "Traceback" in r.stderr and "InputError" in r.stderr
