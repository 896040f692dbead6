"""The one error type users see: a message that says what to fix, exit code 2, no traceback."""

import errno
import os


class BigmodelError(Exception):
    """Bad input or misuse. The CLI prints `error: <message>` and exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = 2, agreed: bool = False):
        super().__init__(message)
        self.exit_code = exit_code
        self.agreed = agreed  # raised by every process of a launch together: the main process says it


def write_failure(error: BaseException) -> str | None:
    """What went wrong when a write failed because of the disk (full, read-only, no permission), in
    words; None for any other error. safetensors reports a full disk as its own error type."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS):
        return os.strerror(error.errno).lower()
    text = str(error)
    for words in ("No space left on device", "Disk quota exceeded", "Permission denied", "Read-only file system"):
        if words in text:
            return words.lower()
    return None
