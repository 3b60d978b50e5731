"""Transcriptions of the authors' published code of each method, kept outside the library.

The tests and ``tools/benchmark.py --official`` compare the project's methods to them. Nothing in the library
(config, data, engine, layers, modeling, solver, utils, train.py, test.py) imports this package."""
