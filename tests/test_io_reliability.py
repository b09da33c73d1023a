"""Reading inputs without silent wrong results: 16-bit scaling, the data folder variable, layering."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from em_keras.data import io
from em_keras.data.synthetic import synthetic_em
from em_keras.errors import InputError

EIGHT_BIT = np.array([[[0, 51], [128, 255]], [[17, 34], [200, 3]]], np.uint8)


def test_uint16_tiff_of_8_bit_values_reads_like_the_8_bit_file(tmp_path):
    tifffile.imwrite(tmp_path / "u8.tif", EIGHT_BIT)
    tifffile.imwrite(tmp_path / "u16.tif", EIGHT_BIT.astype(np.uint16))
    want = io.read_stack(tmp_path / "u8.tif")
    with pytest.warns(UserWarning, match=r"u16\.tif: 16-bit image holds only 8-bit values \(max 255\)"):
        got = io.read_stack(tmp_path / "u16.tif")
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and float(got.max()) == 1.0


def test_uint16_png_folder_of_8_bit_values_is_scaled_as_8_bit(tmp_path):
    for i, s in enumerate(EIGHT_BIT):
        Image.fromarray(s.astype(np.uint16)).save(tmp_path / f"s{i}.png")
    with pytest.warns(UserWarning, match="8-bit values"):
        got = io.read_stack(tmp_path)
    np.testing.assert_allclose(got, EIGHT_BIT / 255.0, atol=1e-7)


def test_uint16_tiff_that_records_its_range_is_scaled_by_it(tmp_path):
    twelve_bit = np.array([[[0, 4095], [1024, 2048]]], np.uint16)
    tifffile.imwrite(tmp_path / "t.tif", twelve_bit, extratags=[(281, "H", 1, 4095, True)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        np.testing.assert_allclose(io.read_stack(tmp_path / "t.tif"), twelve_bit / 4095.0, atol=1e-7)
        # A recorded full 16-bit range is honoured even for dark data: no 8-bit guess, no warning.
        tifffile.imwrite(tmp_path / "d.tif", EIGHT_BIT.astype(np.uint16), extratags=[(281, "H", 1, 65535, True)])
        np.testing.assert_allclose(io.read_stack(tmp_path / "d.tif"), EIGHT_BIT / 65535.0, atol=1e-9)
        # Real 16-bit data keep the 65535 divisor.
        full = np.array([[[0, 65535], [300, 13107]]], np.uint16)
        tifffile.imwrite(tmp_path / "f.tif", full)
        np.testing.assert_allclose(io.read_stack(tmp_path / "f.tif"), full / 65535.0, atol=1e-7)


def test_wrong_data_variable_is_an_error_naming_it(tmp_path, monkeypatch, tiny_stack):
    # A default folder with data must not be used instead of a wrong $EM_KERAS_DATA.
    monkeypatch.chdir(tmp_path)
    os.makedirs("data")
    os.symlink(tiny_stack, os.path.join("data", "isbi2012"))
    assert io.find_data() is not None  # the fallback exists
    missing = str(tmp_path / "nowhere")
    monkeypatch.setenv("EM_KERAS_DATA", missing)
    with pytest.raises(InputError, match=f"EM_KERAS_DATA={missing}: data directory not found"):
        io.find_data()
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("EM_KERAS_DATA", str(empty))
    with pytest.raises(InputError, match=f"EM_KERAS_DATA={empty}: expected train-volume.tif"):
        io.load_data(log=lambda *a: None)
    monkeypatch.setenv("EM_KERAS_DATA", str(tiny_stack / "train-volume.tif"))
    with pytest.raises(InputError, match="EM_KERAS_DATA=.*is a file"):
        io.load_data(log=lambda *a: None)
    monkeypatch.setenv("EM_KERAS_DATA", str(tiny_stack))
    assert io.find_data()[0] == str(tiny_stack / "train-volume.tif")
    # --data wins over the variable.
    monkeypatch.setenv("EM_KERAS_DATA", missing)
    assert io.find_data(str(tiny_stack))[1] == str(tiny_stack / "train-labels.tif")


def test_no_data_anywhere_falls_back_to_synthetic_with_a_note(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EM_KERAS_DATA", raising=False)
    notes = []
    images, labels, source = io.load_data(log=notes.append)
    assert source == "synthetic" and images.shape == labels.shape == (12, 256, 256)
    assert len(notes) == 1 and "synthetic" in notes[0]
    with pytest.raises(InputError, match="no data found"):
        io.load_data(synthetic_fallback=False)


def test_npz_archive_named_npy_is_a_one_line_error(tmp_path):
    np.savez(tmp_path / "a.npz", x=np.zeros((2, 4, 4)))
    os.replace(tmp_path / "a.npz", tmp_path / "a.npy")
    with pytest.raises(InputError, match=r"a\.npy: is an \.npz archive"):
        io.read_stack(tmp_path / "a.npy")


@pytest.mark.parametrize("kwargs, message", [
    (dict(seed=-5), "seed"), (dict(seed=1.5), "seed"), (dict(n=0), "n >= 1"), (dict(size=1), "2x2"),
    (dict(cells=0), "cells"),
])
def test_synthetic_em_bad_arguments(kwargs, message):
    with pytest.raises(InputError, match=message):
        synthetic_em(**kwargs)


def test_io_and_synthetic_do_not_import_keras_or_tensorflow():
    code = (
        "import sys\n"
        "import em_keras.data.io, em_keras.data.synthetic, em_keras.metrics.isbi, em_keras.metrics.pixel\n"
        "x, y = em_keras.data.synthetic.synthetic_em(n=1, size=16)\n"
        "print(sorted(m for m in ('keras', 'tensorflow') if m in sys.modules))\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"
