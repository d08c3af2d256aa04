"""The one error hierarchy of Ekka.

    EkkaError
    ├── UsageError                  a user mistake: bad arguments or bad input (exit code 2)
    │   ├── UnknownArchitectureError
    │   ├── ModelFolderError
    │   ├── UnsupportedShapeError
    │   ├── PromptTooLongError
    │   ├── OutputFolderError
    │   └── TraceFormatError
    └── CaptureError                a framework failed while capturing (exit code 1)

Every class says when it is raised. The CLI catches EkkaError once, prints the message
(never a traceback) and exits with `exit_code`.
"""

from __future__ import annotations


class EkkaError(Exception):
    """Raised for any failure Ekka can explain in one message."""

    exit_code = 1


class UsageError(EkkaError):
    """Raised when the user's arguments or input files are wrong; the message says how to fix it."""

    exit_code = 2


class UnknownArchitectureError(UsageError):
    """Raised when an architecture name is not in the zoo."""


class ModelFolderError(UsageError):
    """Raised when a model folder is missing or lacks a file both frameworks need."""


class UnsupportedShapeError(UsageError):
    """Raised when a model shape is one the target's backend rejects (e.g. a CPU head size)."""


class PromptTooLongError(UsageError):
    """Raised when the prompt plus the generated tokens exceed the model's context."""


class OutputFolderError(UsageError):
    """Raised when an output folder exists and is not something Ekka may overwrite."""


class TraceFormatError(UsageError):
    """Raised when a folder is not a readable Ekka trace."""


class CaptureError(EkkaError):
    """Raised when a framework fails while capturing a trace (the message carries its stderr tail)."""
