"""One exception root for every failure a user can hit: it names the phase, the cause and the remedy.

``__main__`` prints it as one line and as the contract's failure JSON; anything else is a bug and
gets a traceback (phase ``internal``).
"""

from __future__ import annotations

# Exit codes, one per phase (documented in docs/installer.md). 2 is argparse's usage error.
EXIT_CODES: dict[str, int] = {
    "config": 10, "manifest": 11, "fetch": 12, "preflight": 13, "download": 14, "extract": 15,
    "relocate": 16, "commit": 17, "lease": 18, "gc": 19, "activate": 20, "fallback": 21, "doctor": 22,
    "placement": 23,
    "internal": 70,
}


class BootstrapError(Exception):
    """A failure with context: ``phase: what went wrong (remedy: what to do)``."""

    def __init__(self, phase: str, message: str, remedy: str = "", *, retryable: bool = False) -> None:
        super().__init__(message)
        self.phase = phase
        self.message = message
        self.remedy = remedy
        self.retryable = retryable

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.phase, EXIT_CODES["internal"])

    def __str__(self) -> str:
        tail = f" (remedy: {self.remedy})" if self.remedy else ""
        return f"{self.phase}: {self.message}{tail}"

    def to_dict(self) -> dict[str, object]:
        return {"phase": self.phase, "error": self.message, "remedy": self.remedy,
                "exit_code": self.exit_code}
