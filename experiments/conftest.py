"""The tests' shared fixtures (tests/conftest.py) for the experiments' own tests."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

from conftest import real_data, synthetic_stack, tiny_stack  # noqa: E402,F401
