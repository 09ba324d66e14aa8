"""The error of a value the user must change.

It is the engine's UserError too, so a rule checked before a run (QGIS side) and the same rule met
inside the engine speak one message, caught as one error."""
from ..errors import UserError


class InvalidInput(UserError, ValueError):
    """A value the user must change; the message says which and how."""
