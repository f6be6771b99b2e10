"""Pure tensor math: no config objects, shapes in docstrings, numeric tests in tests/test_ops*.py."""
