"""The one user-facing error family of mt6d-mp and the exit codes it maps to.

Programs catch :class:`Mt6dError` at their top level, print ``str(error)`` and exit with
``error.exit_code``; anything else escaping is a bug.
"""

from __future__ import annotations

# LSB init-script exit codes (LSB 3.0.0, "Init Script Actions").
EXIT_OK = 0
EXIT_GENERIC = 1
EXIT_BAD_ARGS = 2
EXIT_UNIMPLEMENTED = 3
EXIT_PRIVILEGE = 4
EXIT_NOT_INSTALLED = 5
EXIT_NOT_CONFIGURED = 6
EXIT_NOT_RUNNING = 7


class Mt6dError(Exception):
    """Base of every error mt6d-mp reports to a user."""

    exit_code = EXIT_GENERIC


class ConfigError(Mt6dError):
    """The configuration (main file, users, ethers, profiles, key files) is invalid.

    ``problems`` holds every problem found, each naming the file and line or key.
    """

    exit_code = EXIT_NOT_CONFIGURED

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class PacketError(Mt6dError, ValueError):
    """A packet could not be parsed or built; the data path counts and drops it."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


class SystemSetupError(Mt6dError):
    """A change to the system (firewall, address, neighbour, queue) failed."""
