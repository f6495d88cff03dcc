"""The one exception type for mistakes a user can fix; the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input, path or setting: the message says what, which file, and what to do."""

    exit_code = 2


class TrainingDiverged(Exception):
    """Training stopped because the loss stayed non-finite: not the user's input, but a run that failed.

    The CLI prints it as one line (with the advice in the message) and exits 3."""

    exit_code = 3


class Interrupted(KeyboardInterrupt):
    """Training stopped on SIGINT/SIGTERM after saving last.pt: the CLI prints the message (where the
    checkpoint is, how to continue) and exits 128 + the signal number (130 Ctrl-C, 143 SIGTERM)."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum
