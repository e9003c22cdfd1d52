"""Errors meant for the user: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad input or an unusable environment (missing data, malformed config, full disk...)."""

    exit_code = 2
