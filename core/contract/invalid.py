"""The error of a value the user must change (jobs.py re-exports it)."""


class InvalidInput(ValueError):
    """A value the user must change; the message says which and how."""
