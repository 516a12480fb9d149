"""The one exception type users see.

Anything a user can get wrong (a missing file, a bad flag, an unknown character) raises
``UserError`` with a one-line message; the command-line entry points print it to stderr
and exit with status 2 instead of showing a traceback.
"""


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""
