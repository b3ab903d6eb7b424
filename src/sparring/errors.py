"""Errors that are the user's to fix (bad input, bad config): the CLI prints them and exits 2."""


class UserError(Exception):
    """A problem with the user's input. The message names the file/line/key and what is wrong."""

    exit_code = 2
