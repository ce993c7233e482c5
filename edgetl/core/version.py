"""The package version, in one place (``edgetl.__version__`` re-exports it)."""

__version__ = "0.1.0"
