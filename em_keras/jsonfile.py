"""Reading the JSON files a user names (settings, parameters, offsets): one reader, one-line errors."""

import json
import os

from em_keras.errors import InputError, first_line

__all__ = ["read_json_object"]


def read_json_object(path, where=None):
    """The JSON object (a dict) stored in ``path``.

    Parameters
    ----------
    path : str or os.PathLike
    where : str, optional
        How messages name the file, e.g. ``"--config runs/a/run.json"`` (default: the path).

    Raises
    ------
    InputError
        One line, ``"<where>: <problem>"``: no such file, not a file, unreadable
        (permissions, not UTF-8), not valid JSON, or valid JSON that is not an object.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "p.json")
    >>> _ = open(path, "w").write('{"sigma": 2}')
    >>> read_json_object(path)
    {'sigma': 2}
    >>> _ = open(path, "w").write('[1, 2]')
    >>> read_json_object(path, where="--params p.json")
    Traceback (most recent call last):
    ...
    em_keras.errors.InputError: --params p.json: expected a JSON object, got list
    """
    path = os.fspath(path)
    where = path if where is None else where
    if not os.path.exists(path):
        raise InputError(f"{where}: no such file")
    if not os.path.isfile(path):
        raise InputError(f"{where}: not a file")
    try:
        with open(path, encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{where}: cannot read ({first_line(exc)})") from None
    except ValueError as exc:
        raise InputError(f"{where}: not valid JSON ({first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    return obj
