"""The one error type users see: a domain error the CLI prints as one line."""

__all__ = ["TzkError", "ConfigError", "DataError"]


class TzkError(Exception):
    """A problem with the user's input (config, files, data), not a bug.

    The CLI prints ``str(error)`` as a single line and exits with status 2.
    Messages say where (the YAML key, the file) and what was expected.
    """


class ConfigError(TzkError):
    """A graph YAML (or a ``--set`` override) is invalid.

    Arguments:
        where: the YAML place, e.g. ``stages.digits.observe``.
        what: what is wrong and what was expected.
    """

    def __init__(self, where: str, what: str):
        self.where = where
        self.what = what
        super().__init__(f"{where}: {what}" if where else what)


class DataError(TzkError):
    """A dataset cannot be found, fetched or read."""
