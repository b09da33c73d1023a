"""The one reader of user-named JSON files: every failure is one InputError line naming the file."""

import pytest

from em_keras.errors import InputError
from em_keras.jsonfile import read_json_object


@pytest.mark.parametrize("content, fragment", [
    (b'{"a": 1,', "not valid JSON (Expecting"),
    (b"[1, 2]", "expected a JSON object, got list"),
    (b'"text"', "expected a JSON object, got str"),
    (b"\xff\xfe{}", "cannot read ("),
])
def test_bad_files_one_line(tmp_path, content, fragment):
    path = tmp_path / "p.json"
    path.write_bytes(content)
    with pytest.raises(InputError) as err:
        read_json_object(path, where=f"--params {path}")
    message = str(err.value)
    assert message.startswith(f"--params {path}: ") and fragment in message and "\n" not in message


def test_missing_and_directory(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_json_object(tmp_path / "none.json")
    with pytest.raises(InputError, match="not a file"):
        read_json_object(tmp_path)


def test_reads_object(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('{"offset": [-0.5, 0.25], "nested": {"k": [1]}}', encoding="utf-8")
    assert read_json_object(str(path)) == {"offset": [-0.5, 0.25], "nested": {"k": [1]}}


@pytest.mark.parametrize("reader", ["config", "segment", "crf", "offset"])
def test_every_reader_uses_it(tmp_path, reader):
    """The four readers of user JSON give the same message for the same broken file."""
    from em_keras.cli.crf import load_params as crf_params
    from em_keras.config import load_config_file as load_config
    from em_keras.inference.offset import parse_offset
    from em_keras.postprocess.segment_params import load_params as seg_params

    path = tmp_path / "bad.json"
    path.write_text('{"a": 1,', encoding="utf-8")
    call = {"config": lambda: load_config(str(path)), "segment": lambda: seg_params(str(path)),
            "crf": lambda: crf_params(str(path)), "offset": lambda: parse_offset(str(path))}[reader]
    with pytest.raises(InputError, match=r"bad\.json: not valid JSON \(Expecting"):
        call()
