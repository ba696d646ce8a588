"""permrl: spatiotemporal self-supervision with a learned permutation policy."""
__version__ = "0.2.0.dev0"  # also the package version (pyproject.toml reads it)
