"""The one error type users see: a message that says what to fix, exit code 2, no traceback."""


class BigmodelError(Exception):
    """Bad input or misuse. The CLI prints `error: <message>` and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.exit_code = exit_code
