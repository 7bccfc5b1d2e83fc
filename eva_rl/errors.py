"""The one exception type that means "the user asked for something wrong".

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug and keeps
its traceback.
"""


class UserError(Exception):
    """Bad input: the message names the problem and, where possible, the fix."""


class RunError(Exception):
    """A run stopped for a reason the message explains (a diverged loss, say); exit code 1."""
