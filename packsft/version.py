"""The packsft version (recorded in every output and plan)."""

__version__ = "0.1.0"
