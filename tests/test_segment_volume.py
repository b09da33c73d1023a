"""``em-keras segment`` on volumes beyond memory: lazy P(cell), one task per slice, resumable Zarr labels."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from scipy import ndimage

from em_keras.cli import segment as segment_cli
from em_keras.errors import InputError, run_cli
from em_keras.postprocess import segment as seg
from killing import kill_when

zarr = pytest.importorskip("zarr", reason="the volume extra (zarr) is not installed")

SHAPE = (5, 64, 96)


@pytest.fixture(scope="module")
def probs():
    """A soft, noisy P(cell) of synthetic cells, 5 slices of 64 x 96 (float32)."""
    from em_keras.data.synthetic import synthetic_em

    _, labels = synthetic_em(n=SHAPE[0], size=SHAPE[1:], seed=4)
    rng = np.random.default_rng(0)
    p = ndimage.gaussian_filter(labels.astype(np.float64), (0, 1, 1))
    p += ndimage.gaussian_filter(rng.normal(0, 0.15, p.shape), (0, 1, 1))
    return np.clip(p, 0, 1).astype(np.float32)


def _zarr(path, data, chunks=(2, 20, 30)):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[:] = data
    return str(path)


def _matched_params(probs):
    """Parameters whose reference quantiles differ from the stack's own (so matching changes the cells)."""
    return seg.check_params({"reference_quantiles": seg.reference_quantiles(probs ** 2.5)})


def _quiet(*_):
    pass


def test_volume_equals_segment_stack_with_and_without_matching(probs, tmp_path, monkeypatch):
    from em_keras.inference.volume_store import ATTR, MARKERS
    from em_keras.postprocess.volume_segment import open_probs, segment_volume, stream_quantiles

    monkeypatch.setattr(seg, "_QUANTILE_SAMPLE", 977)  # a subsample step of 31, not a divisor of 64 * 96
    assert seg.quantile_step(probs.size) == 31
    src = _zarr(tmp_path / "p.zarr", probs)
    np.testing.assert_array_equal(stream_quantiles(open_probs(src), 33), seg._quantiles(probs, 33))
    matched = _matched_params(probs)
    results = {}
    for name, params in (("plain", None), ("matched", matched)):
        out = str(tmp_path / f"{name}.zarr")
        res = segment_volume(src, out, params, chunks=(32, 48), log=_quiet)
        arr = zarr.open_array(out, mode="r")
        assert arr.dtype == np.uint32 and arr.chunks == (1, 32, 48) and res["written"] == 5
        assert arr.attrs[ATTR]["complete"] is True and not os.path.exists(os.path.join(out, MARKERS))
        results[name] = arr[:]
        np.testing.assert_array_equal(results[name], seg.segment_stack(probs, params))
        assert res["cells"] == [int(s.max()) for s in results[name]]
    assert (results["plain"] != results["matched"]).any()  # the matching mattered
    again = segment_volume(src, str(tmp_path / "plain.zarr"), chunks=(32, 48), log=_quiet)
    assert again["written"] == 0 and again["resumed"] == 5  # a finished store is not recomputed


def test_cli_streams_tiff_and_boundaries_like_the_in_memory_path(probs, tmp_path, capsys):
    d = tmp_path
    np.save(d / "p.npy", probs)
    tifffile.imwrite(d / "p.tif", probs)
    (d / "m.json").write_text(json.dumps(_matched_params(probs)))
    mem = ["--probs", str(d / "p.npy"), "--params", str(d / "m.json"), "--workers", "1"]
    assert run_cli(segment_cli.main, mem + ["--out", str(d / "mem.tif"), "--boundaries", str(d / "mb.tif")]) == 0
    vol = ["--probs", str(d / "p.tif"), "--params", str(d / "m.json"), "--chunks", "40,40",
           "--out", str(d / "vol.tif"), "--boundaries", str(d / "vb.tif")]
    assert run_cli(segment_cli.main, vol) == 0
    printed = capsys.readouterr().out
    assert "5 slices of 64x96, uint16" in printed and "(5 segmented)" in printed
    ref = tifffile.imread(d / "mem.tif")
    got = tifffile.imread(d / "vol.tif")
    assert got.dtype == ref.dtype == np.uint16
    np.testing.assert_array_equal(got, ref)
    np.testing.assert_array_equal(tifffile.imread(d / "vb.tif"), tifffile.imread(d / "mb.tif"))
    assert not [f for f in os.listdir(d) if f.startswith(".")]  # the work store is gone


def _slow_cli(args):
    """``em-keras segment`` in a subprocess whose every slice takes at least 0.3 s."""
    code = ("import sys, time\n"
            "from em_keras.postprocess import segment as seg\n"
            "slow = seg.segment_slice\n"
            "seg.segment_slice = lambda *a, **k: (time.sleep(0.3), slow(*a, **k))[1]\n"
            "from em_keras.cli.main import main\n"
            f"sys.exit(main(['segment', *{args!r}]))\n")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_cli_resumes_after_kill(probs, tmp_path, capsys):
    """kill -9 in the middle of a volume; the same command continues from the slices written."""
    from em_keras.inference.volume_store import ATTR, MARKERS, done_keys

    src, out = _zarr(tmp_path / "p.zarr", probs), str(tmp_path / "cells.zarr")
    args = ["--probs", src, "--out", out]
    kill_when(lambda: done_keys(out), proc=_slow_cli(args), timeout=60)
    written = done_keys(out)
    assert 1 <= len(written) < 5, "the kill came too late to test a resume"
    arr = zarr.open_array(out, mode="r")  # readable, and not presented as complete
    assert arr.attrs[ATTR]["complete"] is False
    assert run_cli(segment_cli.main, args) == 0
    printed = capsys.readouterr().out
    assert f"resuming {out}: {len(written)} of 5 slices already segmented" in printed
    assert f"({5 - len(written)} segmented, {len(written)} kept from an earlier run)" in printed
    arr = zarr.open_array(out, mode="r")
    np.testing.assert_array_equal(arr[:], seg.segment_stack(probs))
    assert arr.attrs[ATTR]["complete"] is True and not os.path.exists(os.path.join(out, MARKERS))


def _kill_after_first_slice(out, pid, killed):
    from em_keras.inference.volume_store import done_keys

    def ready():
        killed["done_then"] = len(done_keys(out))
        return killed["done_then"] > 0

    kill_when(ready, pid=pid, timeout=60)


def test_local_dask_cluster_of_two_workers(probs, tmp_path):
    """Two worker processes give the labels of the in-memory path, also when one of them is killed."""
    pytest.importorskip("distributed", reason="the volume extra (dask[distributed]) is not installed")
    import threading

    from em_keras.inference import distributed
    from em_keras.postprocess.volume_segment import segment_volume

    src, out = _zarr(tmp_path / "p.zarr", probs), str(tmp_path / "cells.zarr")
    nan = probs.copy()
    nan[3, 0, 0] = np.nan
    bad = _zarr(tmp_path / "nan.zarr", nan)
    params = _matched_params(probs)
    with distributed.dask_client(workers=2) as client:
        res = segment_volume(src, out, params, client=client, log=_quiet)
        opened = client.run(lambda: [key[0] for key in distributed._VOLUMES])
        with pytest.raises(InputError, match="nan.zarr: slice 3: P.cell. contains NaN"):  # a worker's bad slice
            segment_volume(bad, str(tmp_path / "bad.zarr"), client=client, log=_quiet)

        def slow_workers():  # run on every worker (a nested function travels by value): 0.4 s more per slice
            import time as clock

            from em_keras.postprocess import segment as s

            fast = s.segment_slice
            s.segment_slice = lambda *a, **k: (clock.sleep(0.4), fast(*a, **k))[1]

        client.run(slow_workers)
        pids, killed, again = list(client.run(os.getpid).values()), {}, str(tmp_path / "again.zarr")
        killer = threading.Thread(target=_kill_after_first_slice, args=(again, pids[0], killed), daemon=True)
        killer.start()
        res_killed = segment_volume(src, again, params, client=client, log=_quiet)
        killer.join(timeout=10)
        new_pids = list(client.run(os.getpid).values())
    assert res["written"] == 5 and len(opened) == 2
    assert any(os.path.realpath(src) in keys for keys in opened.values())  # the workers read the slices
    expected = seg.segment_stack(probs, params)
    np.testing.assert_array_equal(zarr.open_array(out, mode="r")[:], expected)
    assert res_killed["written"] == 5 and 0 < killed["done_then"] < 5 and pids[0] not in new_pids
    np.testing.assert_array_equal(zarr.open_array(again, mode="r")[:], expected)


def _with(probs, k, index, value):
    out = probs.copy()
    out[k][index] = value
    return out


BAD_FILES = {  # name -> writes it into a folder, given the good probabilities
    "group.zarr": lambda d, p: zarr.open_group(str(d / "group.zarr"), mode="w").create_array(
        "p", shape=(2, 8, 8), dtype="float32"),
    "4d.zarr": lambda d, p: _zarr(d / "4d.zarr", np.zeros((1, 2, 8, 8), np.float32), chunks=(1, 1, 8, 8)),
    "int.zarr": lambda d, p: _zarr(d / "int.zarr", (p * 255).astype(np.uint8)),
    "nan.zarr": lambda d, p: _zarr(d / "nan.zarr", _with(p, 3, (10, 10), np.nan)),
    "high.zarr": lambda d, p: _zarr(d / "high.zarr", _with(p, 2, (5, 5), 1.5)),
    "dark.zarr": lambda d, p: _zarr(d / "dark.zarr", _with(p, 1, Ellipsis, 0.0)),
    "p.zarr": lambda d, p: _zarr(d / "p.zarr", p),
    "other.zarr": lambda d, p: _zarr(d / "other.zarr", np.zeros((5, 5), np.uint8), chunks=(5, 5)),
    "m.json": lambda d, p: (d / "m.json").write_text(json.dumps(_matched_params(p))),
}


@pytest.fixture
def bad(tmp_path, probs):
    """``bad(*names)``: writes those inputs (:data:`BAD_FILES`) into ``tmp_path`` and returns it."""
    def make(*names):
        for name in dict.fromkeys(names):
            if name in BAD_FILES:
                BAD_FILES[name](tmp_path, probs)
        return tmp_path

    return make


BAD = [
    (["--probs", "group.zarr", "--out", "o.zarr"], "is a Zarr group, not an array"),
    (["--probs", "4d.zarr", "--out", "o.zarr"], "has 4 dimensions"),
    (["--probs", "int.zarr", "--out", "o.zarr"], "expected float probabilities .* dtype uint8"),
    (["--probs", "nan.zarr", "--out", "o.zarr"], "nan.zarr: slice 3: P.cell. contains NaN"),
    (["--probs", "nan.zarr", "--out", "o.tif"], "slice 3: P.cell. contains NaN"),
    (["--probs", "high.zarr", "--out", "o.zarr", "--params", "m.json"], r"slice 2: .*\[0, 1\]"),
    (["--probs", "dark.zarr", "--out", "o.zarr"], "slice 1: no confident cell"),
    (["--probs", "p.zarr", "--out", "other.zarr"], "already holds an array not written by em_keras.*--overwrite"),
    (["--probs", "p.zarr", "--out", "p.zarr"], "same file as --probs"),
    (["--probs", "p.zarr", "--out", "o.zarr", "--tune"], "--tune works on stacks segmented in memory"),
    (["--probs", "p.zarr", "--out", "o.zarr", "--chunks", "2,8,8"], "one slice deep"),
    (["--probs", "p.zarr", "--out", "o.npy"], "expected a .zarr or .tif or .tiff"),
    (["--probs", "p.zarr", "--out", "o.zarr", "--workers", "0"], "--workers 0"),
]


@pytest.mark.parametrize("argv, match", BAD)
def test_cli_volume_bad_input(bad, capsys, argv, match):
    """One line, exit 2; nothing is left behind, not even a store begun before a bad slice."""
    bad = bad(*argv)
    argv = [str(bad / a) if "." in a else a for a in argv]
    before = set(os.listdir(bad))
    assert run_cli(segment_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert __import__("re").search(match, err), err
    # refused before anything was written, or the store this call began (and a TIFF's work store) removed
    assert set(os.listdir(bad)) == before
    if "other.zarr" in argv[3]:
        assert zarr.open_array(str(bad / "other.zarr")).shape == (5, 5)  # untouched


def test_store_refusals_and_overwrite(bad, probs):
    from zarr.storage import LocalStore

    from em_keras.postprocess.volume_segment import segment_volume

    bad = bad("p.zarr", "other.zarr")
    src = str(bad / "p.zarr")
    with pytest.raises(InputError, match="read-only"):
        segment_volume(src, LocalStore(str(bad / "ro.zarr"), read_only=True), log=_quiet)
    segment_volume(src, str(bad / "other.zarr"), overwrite=True, log=_quiet)
    np.testing.assert_array_equal(zarr.open_array(str(bad / "other.zarr"))[:], seg.segment_stack(probs))
    with pytest.raises(InputError, match="already holds another segmentation .*--overwrite"):
        segment_volume(src, str(bad / "other.zarr"), {"min_size": 3}, log=_quiet)


@pytest.mark.parametrize("module, argv", [("zarr", ["--probs", "p.npy", "--out", "o.zarr"]),
                                          ("distributed", ["--probs", "p.npy", "--out", "o.zarr",
                                                           "--workers", "2"])])
def test_missing_optional_package_names_the_extra(tmp_path, probs, monkeypatch, capsys, module, argv):
    np.save(tmp_path / "p.npy", probs)
    monkeypatch.setitem(sys.modules, module, None)
    argv = [str(tmp_path / a) if "." in a else a for a in argv]
    assert run_cli(segment_cli.main, argv) == 2
    err = capsys.readouterr().err
    assert f"'{module}'" in err and 'pip install "em_keras[volume]"' in err and err.count("\n") == 1
    assert os.listdir(tmp_path) == ["p.npy"]


def test_help_explains_both_meanings_of_workers(capsys):
    with pytest.raises(SystemExit):
        segment_cli.build_parser().parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "in memory: N processes" in text and "local Dask cluster of N worker processes" in text
