"""The tests' shared fixtures (tests/conftest.py) for the experiments' own tests.

``tests/conftest.py`` is loaded under its own module name: a plain ``from conftest import``
would find this file, which pytest has already imported as ``conftest``.
"""

import importlib.util
import os

_TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
_spec = importlib.util.spec_from_file_location("em_keras_tests_conftest", os.path.join(_TESTS, "conftest.py"))
_shared = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_shared)

real_data, synthetic_stack, tiny_stack = _shared.real_data, _shared.synthetic_stack, _shared.tiny_stack
