"""Test fixtures that ship with the package: generated media corpora (``media``) for the data pipeline's
tests and benchmarks. Nothing in mmvit's own code paths imports this package."""
