"""Chunked, resumable volume prediction (em_keras.inference.volume) and its Dask runner."""

import os
import subprocess
import sys
import threading

import numpy as np
import pytest
import tifffile

from em_keras.errors import InputError, run_cli
from killing import kill_when

zarr = pytest.importorskip("zarr", reason="the volume extra (zarr) is not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny U-Net (filters 4, depth 2), saved as .keras; returns (model, path)."""
    from em_keras.models.unet import build_unet

    model = build_unet(filters=4, depth=2)
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    model.save(path)
    return model, path


def _stack(n, h, w, seed=0, dtype=np.uint8):
    from em_keras.data.synthetic import synthetic_em

    images, _ = synthetic_em(n=n, size=max(h, w), seed=seed)
    top = np.iinfo(dtype).max
    return np.round(images[:, :h, :w] * top).astype(dtype)


def test_frames_are_the_dihedral_transforms():
    from em_keras.inference.predict import dihedral_transforms
    from em_keras.inference.volume import _frames, _Frame
    from em_keras.inference.volume_input import open_volume

    a = np.arange(3 * 5, dtype=np.uint8).reshape(1, 3, 5)
    vol, x = open_volume(a), a.astype(np.float32) / 255
    frames = _frames(tta=True)
    assert len(frames) == 8 and _frames(tta=False) == frames[:1]
    for fr, (forward, _) in zip(frames, dihedral_transforms()):
        f = _Frame(fr, 3, 5, 1)
        block = f.read(vol, [0], 0, f.hp, 0, f.wp)
        np.testing.assert_array_equal(block, forward(x))
        np.testing.assert_array_equal(f.back(block), x)
        a0, a1, b0, b1 = f.rect(1, 3, 2, 4)  # a sub-rectangle maps to the same pixels
        np.testing.assert_array_equal(f.back(f.read(vol, [0], a0, a1, b0, b1)), x[:, 1:3, 2:4])


def test_padded_frame_matches_pad_to_multiple():
    from em_keras.inference.predict import pad_to_multiple
    from em_keras.inference.volume import _Frame
    from em_keras.inference.volume_input import open_volume

    for h, w in [(10, 13), (3, 30)]:  # reflect, and symmetric when a pad exceeds the image
        a = np.random.default_rng(1).integers(0, 255, (2, h, w), dtype=np.uint8)
        f = _Frame((False, False, False), h, w, 8)
        padded = pad_to_multiple(a.astype(np.float32) / 255, 8)[0]
        np.testing.assert_array_equal(f.read(open_volume(a), [0, 1], 0, f.hp, 0, f.wp), padded)


def test_receptive_field_bounds_influence(tiny):
    from em_keras.inference.field import receptive_field

    model, _ = tiny
    radius, act = receptive_field(model)
    assert radius > 0 and act > 0
    x = np.random.default_rng(0).random((1, 96, 96, 1)).astype(np.float32)
    far = x.copy()
    far[0, 48 + radius + 4:, :, 0] = 1 - far[0, 48 + radius + 4:, :, 0]  # rows beyond the radius, aligned
    base = model.predict_on_batch(x)[0, 48, 48, 0]
    assert model.predict_on_batch(far)[0, 48, 48, 0] == pytest.approx(base, abs=1e-6)
    near = x.copy()
    near[0, 46:51, 46:51, 0] = 1 - near[0, 46:51, 46:51, 0]
    assert abs(model.predict_on_batch(near)[0, 48, 48, 0] - base) > 1e-6


def test_awkward_chunks_equal_in_memory(tiny, tmp_path):
    from em_keras.inference.predict import predict_stack
    from em_keras.inference.volume import predict_volume
    from em_keras.inference.volume_store import ATTR, MARKERS

    model, _ = tiny
    images = _stack(3, 330, 470)
    ref = predict_stack(model, images.astype(np.float32) / 255)
    out = str(tmp_path / "probs.zarr")
    res = predict_volume([model], images, out, chunks=(2, 200, 300), log=lambda s: None)
    assert res["written"] == 2 * 2 * 2 and res["resumed"] == 0
    arr = zarr.open_array(out, mode="r")
    assert arr.shape == (3, 330, 470) and arr.chunks == (2, 200, 300)
    np.testing.assert_allclose(arr[:], ref, atol=2e-5, rtol=0)
    assert arr.attrs[ATTR]["complete"] is True and not os.path.exists(os.path.join(out, MARKERS))
    again = predict_volume([model], images, out, chunks=(2, 200, 300), log=lambda s: None)
    assert again["written"] == 0 and again["resumed"] == 8  # a finished store is not recomputed


def test_tiles_tta_offsets_and_tiff_stream(tiny, tmp_path):
    """Compressed uint16 TIFF in, tiled + TTA + label offsets, chosen slices, TIFF and masks streamed out."""
    from em_keras.inference.offset import shift_probs
    from em_keras.inference.predict import predict_ensemble
    from em_keras.inference.volume import predict_volume

    model, _ = tiny
    images = _stack(3, 70, 90, seed=2, dtype=np.uint16)
    src = str(tmp_path / "in.tif")
    tifffile.imwrite(src, images, compression="zlib")
    kw = dict(tile=32, overlap=8, tta=True, batch_size=4)
    ref = predict_ensemble([model, model], images[[2, 0]].astype(np.float32) / 65535,
                           offsets=[(0.5, -0.25), None], **kw)
    ref = shift_probs(ref, (1.0, 0.5))
    out, masks = str(tmp_path / "p.tif"), str(tmp_path / "m.tif")
    predict_volume([model, model], src, out, chunks=(1, 40, 50), offsets=[(0.5, -0.25), None],
                   offset=(1.0, 0.5), indices=[2, 0], masks=masks, log=lambda s: None, **kw)
    got = tifffile.imread(out)
    np.testing.assert_allclose(got, ref, atol=2e-5, rtol=0)
    np.testing.assert_array_equal(tifffile.imread(masks), np.where(got > 0.5, 255, 0))
    assert sorted(os.listdir(tmp_path)) == ["in.tif", "m.tif", "p.tif"]  # the work store is gone


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float32, np.float64, np.bool_])
def test_lazy_read_scales_like_read_stack(tmp_path, dtype):
    from em_keras.data.io import read_stack
    from em_keras.inference.volume_input import _RawFile, open_volume

    rng = np.random.default_rng(0)
    top = {np.float32: 3, np.float64: 0.9, np.uint16: 4000}.get(dtype, 200)
    data = (rng.random((3, 20, 30)) * top).astype(dtype)
    tif, npy = str(tmp_path / "v.tif"), str(tmp_path / "v.npy")
    tifffile.imwrite(tif, data)
    np.save(npy, data)
    ref = read_stack(tif)
    for src in (tif, npy, data):
        vol = open_volume(src)
        assert vol.shape == (3, 20, 30)
        if isinstance(src, str) and dtype != np.bool_:  # bool TIFF pages are bit-packed
            assert isinstance(vol.data, _RawFile)  # plain reads, no memory map
        np.testing.assert_array_equal(vol.read([0, 1, 2], 0, 20, 0, 30), ref)
        np.testing.assert_array_equal(vol.read([2, 0], 5, 9, 7, 30), ref[[2, 0], 5:9, 7:])


def test_zarr_and_ome_zarr_inputs(tmp_path):
    from em_keras.inference.volume_input import open_volume

    data = _stack(2, 24, 40)
    plain = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(1, 16, 16), dtype="uint8")
    plain[:] = data
    group = zarr.open_group(str(tmp_path / "ome.zarr"), mode="w")
    level = group.create_array("0", shape=(1, 1, *data.shape), chunks=(1, 1, 1, 16, 16), dtype="uint8")
    level[:] = data[None, None]
    group.attrs["multiscales"] = [{"version": "0.4", "datasets": [{"path": "0"}],
                                   "axes": [{"name": a} for a in "tczyx"]}]
    for path in (str(tmp_path / "a.zarr"), str(tmp_path / "ome.zarr")):
        vol = open_volume(path)
        assert vol.shape == (2, 24, 40)
        np.testing.assert_array_equal(vol.read([1], 3, 20, 5, 33), data[1:2, 3:20, 5:33] / np.float32(255))


def test_bad_inputs_are_one_line_errors(tmp_path):
    from em_keras.inference.volume_input import open_volume

    zarr.open_group(str(tmp_path / "g.zarr"), mode="w").create_array("raw", shape=(4, 4), dtype="uint8")
    zarr.create_array(str(tmp_path / "4d.zarr"), shape=(2, 2, 8, 8), dtype="uint8")
    zarr.create_array(str(tmp_path / "c.zarr"), shape=(2, 8, 8), dtype="complex64")
    rgb = str(tmp_path / "rgb.tif")
    tifffile.imwrite(rgb, np.zeros((2, 16, 16, 3), np.uint8))
    cases = {"g.zarr": "is a Zarr group, not an array; name one of its arrays, e.g.",
             "4d.zarr": "has 4 dimensions", "c.zarr": "is not a grey image", "rgb.tif": "colour",
             "missing.zarr": "no such file"}
    for name, text in cases.items():
        with pytest.raises(InputError, match=text) as err:
            open_volume(str(tmp_path / name), "--images").read([0], 0, 2, 0, 2)
        assert "\n" not in str(err.value) and str(err.value).startswith("--images ")


def test_output_store_refusals(tiny, tmp_path):
    from zarr.storage import LocalStore

    from em_keras.inference.volume import predict_volume

    model, _ = tiny
    images = _stack(1, 16, 16)
    quiet = dict(log=lambda s: None)
    with pytest.raises(InputError, match="read-only"):
        predict_volume([model], images, LocalStore(str(tmp_path / "ro.zarr"), read_only=True), **quiet)
    other = str(tmp_path / "other.zarr")
    zarr.create_array(other, shape=(5, 5), dtype="uint8")
    with pytest.raises(InputError, match="already holds an array not written by em_keras.*--overwrite"):
        predict_volume([model], images, other, **quiet)
    assert zarr.open_array(other).shape == (5, 5)  # untouched
    predict_volume([model], images, other, overwrite=True, **quiet)
    assert zarr.open_array(other).shape == (1, 16, 16)
    with pytest.raises(InputError, match="already holds another prediction"):  # other settings
        predict_volume([model], images, other, tta=True, **quiet)
    (tmp_path / "junk.zarr").mkdir()
    (tmp_path / "junk.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a Zarr store"):
        predict_volume([model], images, str(tmp_path / "junk.zarr"), overwrite=True, **quiet)
    huge = zarr.create_array(str(tmp_path / "huge.zarr"), shape=(1, 300000, 300000), chunks=(1, 4096, 4096),
                             dtype="uint8")
    with pytest.raises(InputError, match="--chunks 1,300000,300000: one chunk needs about .* GiB"):
        predict_volume([model], huge, str(tmp_path / "o.zarr"), chunks=(1, 300000, 300000), **quiet)


def test_missing_optional_dependency_names_the_extra(monkeypatch, tmp_path):
    from em_keras.inference.volume_input import open_volume

    monkeypatch.setitem(sys.modules, "zarr", None)
    (tmp_path / "a.zarr").mkdir()
    with pytest.raises(InputError, match=r'pip install "em_keras\[volume\]"'):
        open_volume(str(tmp_path / "a.zarr"))


def _cli(args, **kw):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.Popen([sys.executable, "-m", "em_keras", "predict", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_cli_resumes_after_kill(tiny, tmp_path):
    """kill -9 in the middle of a volume; the same command continues from the chunks written."""
    from em_keras.inference.predict import predict_stack
    from em_keras.inference.volume_store import ATTR, MARKERS, done_keys

    model, path = tiny
    images = _stack(2, 128, 128, seed=5)
    src, out = str(tmp_path / "v.tif"), str(tmp_path / "p.zarr")
    tifffile.imwrite(src, images)
    args = ["--model", path, "--images", src, "--out", out, "--chunks", "1,32,32"]
    kill_when(lambda: len(done_keys(out)) >= 3, proc=_cli(args), timeout=120)
    written = done_keys(out)
    assert 3 <= len(written) < 32, "the kill came too late to test a resume"
    arr = zarr.open_array(out, mode="r")  # readable, and not presented as complete
    assert arr.attrs[ATTR]["complete"] is False
    stdout, stderr = _cli(args).communicate(timeout=300)
    assert f"resuming {out}: " in stdout and "chunks already written" in stdout, stderr
    assert f"{len(written)} kept from an earlier run" in stdout
    ref = predict_stack(model, images.astype(np.float32) / 255)
    np.testing.assert_allclose(zarr.open_array(out, mode="r")[:], ref, atol=2e-5, rtol=0)
    assert zarr.open_array(out).attrs[ATTR]["complete"] is True and not os.path.exists(os.path.join(out, MARKERS))


def test_cli_volume_flags(tiny, tmp_path, capsys):
    from em_keras.cli.predict import main

    _, path = tiny
    src = str(tmp_path / "v.tif")
    tifffile.imwrite(src, _stack(2, 40, 40))
    base = ["--model", path, "--images", src]
    cases = [(["--out", str(tmp_path / "o.zarr"), "--chunks", "1,2"], "--chunks 1,2: expected three"),
             (["--out", str(tmp_path / "o.png"), "--chunks", "1,8,8"], "must end with .zarr, .tif"),
             (["--out", str(tmp_path / "o.zarr"), "--workers", "0"], "--workers 0: must be at least 1"),
             (["--out", src, "--chunks", "1,8,8"], "same file as --images")]
    for extra, text in cases:
        assert run_cli(lambda a: main(a), base + extra) == 2
        err = capsys.readouterr().err
        assert text in err and err.count("\n") == 1, err
    assert run_cli(lambda a: main(a), base + ["--out", str(tmp_path / "p.npy"), "--chunks", "1,24,24"]) == 0
    assert "in chunks of 1,24,24 (8 computed)" in capsys.readouterr().out
    assert np.load(tmp_path / "p.npy").shape == (2, 40, 40)


@pytest.mark.slow
def test_dask_two_workers_survive_a_killed_worker(tiny, tmp_path):
    pytest.importorskip("distributed", reason="the volume extra (dask[distributed]) is not installed")
    from em_keras.inference.distributed import dask_client, load_counts
    from em_keras.inference.predict import predict_stack
    from em_keras.inference.volume import predict_volume
    from em_keras.inference.volume_store import done_keys

    model, path = tiny
    images = _stack(4, 128, 128, seed=7)
    src, out = str(tmp_path / "v.tif"), str(tmp_path / "p.zarr")
    tifffile.imwrite(src, images)
    killed = {}

    def kill_one(pids):
        def ready():
            killed["done_then"] = len(done_keys(out))
            return killed["done_then"] > 0

        kill_when(ready, pid=pids[0], timeout=120)
        killed["pid"] = pids[0]

    with dask_client(workers=2) as client:
        pids = list(client.run(os.getpid).values())
        assert len(pids) == 2
        killer = threading.Thread(target=kill_one, args=(pids,), daemon=True)
        killer.start()
        res = predict_volume([path], src, out, chunks=(1, 32, 32), client=client, log=lambda s: None)
        killer.join(timeout=5)
        counts = client.run(load_counts)
        new_pids = list(client.run(os.getpid).values())
    assert res["written"] == 64 and 0 < killed["done_then"] < 64
    assert killed["pid"] not in new_pids
    assert all(list(c.values()) == [1] for c in counts.values())  # each worker loaded the model once
    np.testing.assert_allclose(zarr.open_array(out, mode="r")[:], predict_stack(model, images / np.float32(255)),
                               atol=2e-5, rtol=0)
