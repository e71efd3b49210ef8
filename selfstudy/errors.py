"""The one exception type for user mistakes."""


class UserError(Exception):
    """A mistake in what the user asked for (a config, a flag, a file).

    Its message is one line that names the problem and the fix; `main.py` prints it
    without a traceback and exits with status 2.
    """
