"""Errors a user can cause. The CLI turns each into one line on stderr and exit status 1."""


class PacksftError(Exception):
    """Base class of every error packsft raises for bad input, bad configuration or a failed job."""


class InputError(PacksftError):
    """The input folder or one of its files cannot be read as conversations."""


class BadRecordError(PacksftError):
    """One record is malformed and --strict asked to stop at the first one."""


class ConfigError(PacksftError):
    """A configuration value or file is invalid."""


class TokenizerError(PacksftError):
    """The tokenizer cannot be loaded or cannot represent the data."""


class OutputError(PacksftError):
    """The output folder cannot be written, or an existing output is incomplete or corrupt."""


class MissingDependencyError(PacksftError):
    """A dependency (PyTorch for the loader, Ray for `packsft ray`, jinja2 for chat templates) is not installed."""


class ResumeError(PacksftError):
    """A loader state does not belong to this data or this loader."""


class IncompleteOutputError(OutputError):
    """Some planned units have no complete shard yet (merge waits for them)."""


class PackInterrupted(PacksftError):
    """The run was stopped by a signal; completed units are kept and a rerun resumes."""


class UnusableOutputError(PacksftError):
    """A run packed nothing, or rejected more of its records than --max-reject-fraction allows."""
