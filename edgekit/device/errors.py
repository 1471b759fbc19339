"""The device side's one exception: a failure with a message meant for the user."""


class RunnerError(Exception):
    """Written into the result JSON as ``error: {kind, message, hint}``, never shown as a traceback."""

    def __init__(self, kind, message, hint=None):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message
        self.hint = hint


def first_line(exc):
    """The first line of an exception's text (its type's name when it has none)."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]
