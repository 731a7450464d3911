"""Benchmarks and data-building scripts: tools above the library's layers.

They import the library and only the command line imports them (``duplexer bench NAME``);
nothing in ``runtime``, ``policies``, ``kernels``, ``actors``, ``protocols`` or ``sims``
imports this package. Figures are printed, and appended to a benchmark log where
:mod:`duplexer.bench.log` says.
"""
