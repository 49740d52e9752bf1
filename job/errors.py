"""The two kinds of failure the CLI turns into a one-line message and an exit code."""


class JobError(Exception):
    """A runtime failure (missing data, unwritable folder, corrupt file): exit 1."""

    exit_code = 1


class UsageError(JobError):
    """The command line asks for something that cannot exist (unknown model, fold 7): exit 2."""

    exit_code = 2
