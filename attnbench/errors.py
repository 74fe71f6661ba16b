"""Project exceptions: errors a user can cause carry a one-line message saying what to do.

The CLI prints `AttnbenchError` messages without a traceback and exits with `exit_code` (2 by default).
"""

from __future__ import annotations


class AttnbenchError(Exception):
    """A user-caused error (bad suite, unknown mechanism, bad checkpoint, ...)."""

    exit_code = 2


class SuiteError(AttnbenchError):
    """A suite file that cannot be run; the message starts with `file:line:`."""


class UnknownMechanism(AttnbenchError, KeyError):
    """A mechanism name that is not registered."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class MechanismUnavailable(AttnbenchError):
    """The mechanism cannot run here (missing package, wrong device, ...); the message is the reason."""


class PluginError(AttnbenchError):
    """A plugin module or file could not be imported."""


class CheckpointError(AttnbenchError):
    """A checkpoint that cannot be loaded safely or does not match the model."""


class ResultsError(AttnbenchError):
    """A results file that cannot be read."""


class GateError(AttnbenchError):
    """A gate that cannot be evaluated: missing or unreadable input, no common cases, bad option."""
