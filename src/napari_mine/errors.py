"""The exception for mistakes a user can fix, and the one a cancelled step raises.

Every message is one sentence that says what was wrong and what to do, so the CLI and the viewer can show it
as it is instead of a stack trace.
"""


class MineInputError(ValueError):
    """Bad input: a file, a parameter or a model that cannot be used as given."""


class Cancelled(RuntimeError):
    """Raised inside a long step when `should_stop()` asked it to end; nothing was written."""
