"""The one error hierarchy of Ekka.

    EkkaError
    ├── UsageError                  a user mistake: bad arguments or bad input (exit code 2)
    │   ├── UnknownArchitectureError
    │   ├── ModelFolderError
    │   ├── UnsupportedShapeError
    │   ├── PromptTooLongError
    │   ├── OutputFolderError
    │   ├── TraceFormatError
    │   ├── ReportFormatError       a report.json that is not one Ekka can read
    │   ├── NotARepositoryError
    │   ├── UnknownRefError
    │   ├── CommitRangeError
    │   ├── DirtyRepositoryError
    │   ├── EndpointError           a bisection endpoint does not probe as claimed
    │   ├── OracleStartError
    │   ├── DatabaseError           a database URL that opens nothing (ekka.storage)
    │   │   └── VerdictCacheError
    │   ├── ContainerEngineError    no docker package, or no engine answering
    │   ├── ConfigError             a malformed configuration file, or a missing secret
    │   └── RayClusterError         no ray package, no cluster answering, or bad task resources
    ├── CaptureError                a framework failed while capturing (exit code 1)
    │   └── ProtocolError           a message between the parent and the target is not one
    ├── WorktreeError               git could not make a worktree for a commit (exit code 1)
    ├── GitHubError                 GitHub refused a call or kept failing (ekka.forge)
    └── ImageBuildError             a commit's image could not be obtained (a probe skips)

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


class ReportFormatError(UsageError):
    """Raised when a report's JSON lacks a key one of its records needs or holds a value of
    the wrong kind (a report from another version of Ekka, or not a report)."""


class CaptureError(EkkaError):
    """Raised when a framework fails while capturing a trace (the message carries its stderr tail)."""


class ProtocolError(CaptureError):
    """Raised when a message between the parent and the target's process is unknown or
    malformed (the message quotes it)."""


class NotARepositoryError(UsageError):
    """Raised when a path given as a repository is not the top folder of a git repository."""


class UnknownRefError(UsageError):
    """Raised when a good or bad ref (commit, branch, tag) does not name a commit in the repository."""


class CommitRangeError(UsageError):
    """Raised when good and bad do not bound a range: equal, not an ancestor, or off bad's first-parent chain."""


class DirtyRepositoryError(UsageError):
    """Raised when the repository has uncommitted changes to tracked files and a clean one is required."""


class EndpointError(UsageError):
    """Raised when the good endpoint does not probe good or the bad one does not probe bad.

    Carries the endpoints' step records (`good_step`, `bad_step`; None when that endpoint
    behaved) so a caller can show every probe's reason.
    """

    def __init__(self, message: str, *, good_step: object = None, bad_step: object = None) -> None:
        super().__init__(message)
        self.good_step = good_step
        self.bad_step = bad_step


class OracleStartError(UsageError):
    """Raised when the oracle command could not start at all (its program or the shell is missing)."""


class DatabaseError(UsageError):
    """Raised when a database URL is malformed, names a dialect or driver that is not installed,
    or its database cannot be opened (`ekka.storage.open_database`)."""


class VerdictCacheError(DatabaseError):
    """Raised when the verdict cache's database URL is malformed or its database cannot be opened."""


class GitHubError(EkkaError):
    """Raised when a GitHub API call is refused (4xx) or keeps failing after the retries (5xx,
    rate limits, time-outs); `status` is the last HTTP status (None: no answer)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WorktreeError(EkkaError):
    """Raised when `git worktree add` fails for a commit (the message carries git's stderr)."""


class ContainerEngineError(UsageError):
    """Raised when the docker executor cannot reach a container engine: the `docker` package
    is not installed (the `docker` extra) or no Docker daemon answers."""


class RayClusterError(UsageError):
    """Raised when the ray executor cannot use a cluster: the `ray` package is not installed
    (the `ray` extra), no cluster answers at the address, or a task's resources are malformed."""


class ImageBuildError(EkkaError):
    """Raised when no strategy gives a commit's image (the build failed); carries the commit
    and the build's log, whose last lines become the probe's skip reason."""

    def __init__(self, message: str, *, commit: str = "", log: str = "") -> None:
        super().__init__(message)
        self.commit = commit
        self.log = log


class ConfigError(UsageError):
    """Raised when a configuration file (the bot's TOML) is malformed or a secret it needs is
    missing from the environment (the message names which, and where)."""
