"""Errors that mean "bad input": the command-line entry points turn them into one line and exit 2."""


class KDError(Exception):
    """Base class for user-facing errors (bad arguments, missing data, bad configuration)."""


class DataNotFoundError(KDError):
    """A data set's files are not under the data root and could not be downloaded."""


class ConfigError(KDError, ValueError):
    """An argument or configuration value is out of range or inconsistent."""
