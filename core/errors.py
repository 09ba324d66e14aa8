"""Errors a user can act on.

A ``UserError`` carries a message that names the problem and the fix; the
command line prints it without a traceback (and as an ``error`` event with
``--json-progress``). Anything else escaping a job is a bug in MaskForge.
"""


class UserError(Exception):
    """Bad input or environment: the message says what is wrong and what to do."""


class Cancelled(Exception):
    """The job was asked to stop (SIGINT/SIGTERM or the caller's cancel)."""
