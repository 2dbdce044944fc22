"""The one user-facing exception of the pack builder."""

from __future__ import annotations


class PackError(Exception):
    """A failure a user can act on: which phase, what went wrong, what to do.

    ``__main__`` prints it as one line (``pack <phase>: <what>; <hint>``); anything else is a bug and
    gets a traceback.
    """

    def __init__(self, phase: str, what: str, hint: str = "") -> None:
        self.phase = phase
        self.what = what
        self.hint = hint
        super().__init__(f"pack {phase}: {what}" + (f"; {hint}" if hint else ""))
