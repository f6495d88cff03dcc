"""The one exception type for mistakes a user can fix; the CLI prints it as one line and exits 2."""


class UserError(Exception):
    """Bad input, path or setting: the message says what, which file, and what to do."""

    exit_code = 2
