"""``python -m em_keras``: the same command as ``em-keras``."""

from em_keras.cli.main import console_main

if __name__ == "__main__":
    console_main()
