"""Errors that reach the user as one clear line, and the CLI wrapper that prints them."""

import sys

__all__ = ["InputError", "TrainingError", "run_cli"]


class InputError(ValueError):
    """Bad user input (file, shape, dtype, values, flags).

    The message is one line that names the file or flag and what is wrong.
    Command-line entry points print it as ``error: <message>`` and exit 2.
    """


class TrainingError(RuntimeError):
    """Training failed in a way the user can act on (e.g. the loss became NaN).

    Command-line entry points print it as one line and exit 3.
    """


def run_cli(main, argv=None):
    """Run ``main(argv)`` and turn :class:`InputError` into a one-line error.

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
        training run (e.g. NaN loss), 130 on Ctrl-C.
        ``--debug`` in ``argv`` re-raises instead, to show the traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv
    try:
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
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    return 0 if code is None else int(code)
