"""How failures reach the user: `UserError` means "the user asked for something wrong" (the CLI
prints one line, exit code 2), `RunError` a run that stopped for a stated reason (exit code 1),
and `out_of_room` recognises a full disk wherever a library raised it; anything else is a bug
and keeps its traceback.
"""

import errno
import os


class UserError(Exception):
    """Bad input: the message names the problem and, where possible, the fix."""


class RunError(Exception):
    """A run stopped for a reason the message explains (a diverged loss, say); exit code 1."""


FULL = (errno.ENOSPC, errno.EDQUOT, errno.ENAMETOOLONG)


def out_of_room(error: BaseException) -> str | None:
    """What a write that found no room said: a full disk or quota, or a name too long, as an
    OSError anywhere in the chain, or as the libraries word it (torch.save's RuntimeError)."""
    seen = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in FULL:
            where = f" ({seen.filename})" if seen.filename else ""
            return os.strerror(seen.errno).lower() + where
        if "No space left on device" in str(seen) or "file write failed" in str(seen):
            return "no space left on device"
        seen = seen.__cause__ or seen.__context__
    return None
