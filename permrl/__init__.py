"""permrl: spatiotemporal self-supervision with a learned permutation policy."""
__version__ = "0.1.0"
