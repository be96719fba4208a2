"""The one exception type for user mistakes: main.py prints it as one line and exits 2."""


class UserError(Exception):
    """A mistake the user can fix (config, override, data, paths); never a bug of ours."""


class TrainingStopped(Exception):
    """Training cannot go on (a non-finite loss); the message says where and what to try."""


class RunInterrupted(Exception):
    """SIGINT/SIGTERM arrived; a checkpoint was saved and the same command resumes."""
