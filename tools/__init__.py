"""Developer tools (benchmarks, release packing, figures, the embedded sample, the reference's .npy layout).

They import the bundle's library (``scripts``) and run from the repository root (``python -m tools.<name>``); the
release zip does not ship them.
"""
