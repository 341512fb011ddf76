"""One base class for every error a user can cause, so the CLI and the dashboard can show
its message instead of a stack trace."""


class MashupError(Exception):
    """Bad input or state that the user can fix; the message says what and where."""
