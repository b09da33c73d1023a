import os
import subprocess
import sys
import textwrap

import pytest

from em_keras import runtime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("machine", ["x86_64", "AMD64"])
def test_enable_onednn_sets_the_variable_on_x86_64(machine):
    env = {}
    assert runtime.enable_onednn(env, machine=machine) is True
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "1"
    assert runtime.onednn_enabled(env) is True


@pytest.mark.parametrize("value", ["0", "false", "1"])
def test_enable_onednn_keeps_the_users_choice(value):
    env = {"TF_ENABLE_ONEDNN_OPTS": value}
    assert runtime.enable_onednn(env, machine="x86_64") is False
    assert env == {"TF_ENABLE_ONEDNN_OPTS": value}
    assert runtime.onednn_enabled(env) is (value == "1")


def test_enable_onednn_leaves_other_machines_alone():
    env = {}
    assert runtime.enable_onednn(env, machine="aarch64") is False
    assert env == {} and runtime.onednn_enabled(env) is None


def _run(code, env_extra=None, drop=("TF_ENABLE_ONEDNN_OPTS", "TF_CPP_MIN_LOG_LEVEL", "EM_KERAS_ONEDNN_AUTO")):
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=180)


def test_filtered_stderr_drops_only_the_banner():
    r = _run("""
        import os
        from em_keras.runtime import _filtered_stderr
        with _filtered_stderr():
            os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called\\n")
            os.write(2, b"kept line\\n")
            os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. x\\n")
        os.write(2, b"after\\n")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "kept line\nafter\n"


_CLI = """
    import sys
    from em_keras.errors import run_cli
    from em_keras import runtime

    def main(argv):
        import keras  # loads TensorFlow through the import hook
        from tensorflow.python.util import _pywrap_util_port
        assert not any(isinstance(f, runtime._QuietFinder) for f in sys.meta_path)
        print(_pywrap_util_port.IsMklEnabled(), keras.ops.sum(keras.ops.ones(3)))

    sys.exit(run_cli(main, []))
"""


@pytest.mark.skipif(runtime.platform.machine().lower() not in ("x86_64", "amd64"), reason="x86-64 only")
def test_cli_runs_tensorflow_with_onednn_and_no_banner():
    r = _run(_CLI)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "True"
    assert "oneDNN" not in r.stderr and "absl" not in r.stderr, r.stderr


def test_a_lookup_of_tensorflow_leaves_the_quiet_hook_for_the_import():
    r = _run("""
        import importlib.util
        from em_keras import runtime
        runtime.prepare_tensorflow()
        assert importlib.util.find_spec("tensorflow") is not None  # "is it installed?" checks
        import tensorflow
        print(tensorflow.__version__)
    """)
    assert r.returncode == 0, r.stderr
    assert "oneDNN" not in r.stderr and "absl" not in r.stderr, r.stderr


def test_cli_respects_tf_enable_onednn_opts_0():
    r = _run(_CLI, {"TF_ENABLE_ONEDNN_OPTS": "0"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split()[0] == "False"


def test_run_json_versions_record_the_kernels_in_use():
    from em_keras.training.loop import versions

    wanted = runtime.onednn_enabled()
    if wanted is None:
        pytest.skip("TF_ENABLE_ONEDNN_OPTS unset: TensorFlow's own default applies")
    assert versions()["tensorflow_onednn"] is wanted


@pytest.mark.parametrize("env, onednn, expected", [
    ({"TF_ENABLE_ONEDNN_OPTS": "1", "EM_KERAS_ONEDNN_AUTO": "1"}, False, True),  # our setting, FCN
    ({"TF_ENABLE_ONEDNN_OPTS": "1", "EM_KERAS_ONEDNN_AUTO": "1"}, True, False),  # U-Net: same kernels
    ({"TF_ENABLE_ONEDNN_OPTS": "1"}, False, False),  # the user's own choice
    ({"TF_ENABLE_ONEDNN_OPTS": "0", "EM_KERAS_ONEDNN_AUTO": "1"}, False, False),
    ({}, False, False),
])
def test_kernels_differ_only_when_em_keras_chose_onednn_for_a_model_that_opts_out(env, onednn, expected):
    assert runtime.kernels_differ(onednn, env) is expected


def test_undo_enable_onednn_only_removes_our_own_setting():
    env = {}
    runtime.enable_onednn(env, machine="x86_64")
    assert runtime.undo_enable_onednn(env) is True and env == {}
    user = {"TF_ENABLE_ONEDNN_OPTS": "1"}
    assert runtime.undo_enable_onednn(user) is False and user == {"TF_ENABLE_ONEDNN_OPTS": "1"}


def test_disable_onednn_asks_for_eigen_unless_decided():
    env = {}
    assert runtime.disable_onednn(env) is True
    assert env["TF_ENABLE_ONEDNN_OPTS"] == "0" and runtime.onednn_enabled(env) is False
    assert runtime.kernels_differ(False, env) is False  # nothing to take back in a child process
    for value in ("0", "1"):
        user = {"TF_ENABLE_ONEDNN_OPTS": value}
        assert runtime.disable_onednn(user) is False and user == {"TF_ENABLE_ONEDNN_OPTS": value}


_FCN_MAIN = """
    import os
    from em_keras.cli.train import EIGEN_MODELS, main
    assert EIGEN_MODELS == {"fcn"}
    try:
        main(["fcn", "--help"])
    except SystemExit:
        pass
    print(os.environ.get("TF_ENABLE_ONEDNN_OPTS"))
"""


@pytest.mark.parametrize("env, expected", [
    ({"TF_ENABLE_ONEDNN_OPTS": "1", "EM_KERAS_ONEDNN_AUTO": "1"}, "0"),  # an em_keras parent turned it on
    ({}, "0"),  # unset: TensorFlow 2.21 would pick oneDNN on AVX-512 VNNI/BF16 CPUs, where FCN-32s aborts
    ({"TF_ENABLE_ONEDNN_OPTS": "1"}, "1"),  # the user's own choice wins
])
def test_fcn_training_asks_for_eigen_kernels(env, expected):
    r = _run(_FCN_MAIN, env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == expected
