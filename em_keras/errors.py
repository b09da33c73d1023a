"""Errors that reach the user as one clear line, and the CLI wrapper that prints them."""

import argparse
import sys

__all__ = ["InputError", "TrainingError", "ArgumentParser", "first_line", "run_cli"]


class InputError(ValueError):
    """Bad user input (file, shape, dtype, values, flags).

    The message is one line that names the file or flag and what is wrong.
    Command-line entry points print it as ``error: <message>`` and exit 2.
    """


class TrainingError(RuntimeError):
    """Training failed in a way the user can act on (e.g. the loss became NaN).

    Command-line entry points print it as one line and exit 3.
    """


def first_line(exc):
    r"""The first line of an exception's message, or its class name when the message is empty.

    Examples
    --------
    >>> first_line(ValueError("bad value\nmore detail"))
    'bad value'
    >>> first_line(OSError())
    'OSError'
    """
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose usage errors are a one-line :class:`InputError`.

    A bad flag (``--epochs abc``, a missing required flag, an unknown option)
    then prints ``error: <message> (see <prog> --help)`` and exits 2, like every
    other bad input, instead of argparse's multi-line usage block.
    """

    def error(self, message):
        raise InputError(f"{message} (see {self.prog} --help)")


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """Print a warning as ``warning: <message>`` on stderr (``warnings.showwarning`` signature)."""
    text = str(message).splitlines()[0] if str(message) else category.__name__
    print(f"warning: {text}", file=sys.stderr if file is None else file)


def run_cli(main, argv=None):
    """Run ``main(argv)`` and turn :class:`InputError` into a one-line error.

    First calls :func:`em_keras.runtime.prepare_tensorflow`: TensorFlow, loaded
    later, then uses its oneDNN CPU kernels on x86-64 (unless
    ``TF_ENABLE_ONEDNN_OPTS`` is set) without printing its start-up banner.
    A ``KERAS_BACKEND`` that is unknown or not installed is a bad input
    (:func:`em_keras.runtime.check_backend`).

    Parameters
    ----------
    main : callable
        Takes ``argv`` (list of str or None) and returns an exit code or None.
    argv : list of str, optional
        Arguments; ``sys.argv[1:]`` when None.

    Returns
    -------
    int
        The process exit code: 0 on success, 2 on bad input, 3 on a failed
        training run (e.g. NaN loss), 1 on an operating-system error while
        reading or writing (e.g. disk full), 130 on Ctrl-C.
        ``--debug`` in ``argv`` re-raises instead, to show the traceback.
    """
    import os

    from em_keras.runtime import check_backend, prepare_tensorflow

    # TensorFlow is imported lazily, after this: keep its start-up INFO lines off stderr,
    # and use its oneDNN CPU kernels on x86-64 unless TF_ENABLE_ONEDNN_OPTS says otherwise.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    argv = sys.argv[1:] if argv is None else list(argv)
    prepare_tensorflow()
    debug = "--debug" in argv
    if not debug:
        import warnings

        warnings.showwarning = _one_line_warning
    try:
        # a KERAS_BACKEND that Keras cannot load: one line naming the extra, before Keras loads
        check_backend(need_package=bool(os.environ.get("KERAS_BACKEND")))
        code = main(argv)
    except InputError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:
        if debug:
            raise
        print(f"training failed: {exc}", file=sys.stderr)
        return 3
    except OSError as exc:  # disk full, permissions, I/O errors: one line, not a traceback
        if debug:
            raise
        print(f"error: {first_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
