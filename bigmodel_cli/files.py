"""Checks on input files, run before anything expensive: one clear line for each problem."""

from __future__ import annotations

from pathlib import Path

from bigmodel_cli.errors import BigmodelError

CHECKED_BYTES = 8 * 1024 * 1024  # decode this much up front; the loaders read the rest


def check_text_file(path: str | Path, what: str) -> Path:
    """A readable, non-empty UTF-8 text file, or a BigmodelError naming it and what to do."""
    path = Path(path)
    if not path.exists():
        raise BigmodelError(f"{what} {path} not found; check the path (relative paths start at {Path.cwd()})")
    if not path.is_file():
        raise BigmodelError(f"{what} {path} is a folder, not a file")
    try:
        with path.open("rb") as f:
            head = f.read(CHECKED_BYTES)
    except OSError as e:
        raise BigmodelError(f"{what} {path} cannot be read ({e.strerror})") from None
    if not head.strip():
        raise BigmodelError(f"{what} {path} is empty")
    if b"\x00" in head:
        raise BigmodelError(f"{what} {path} is binary, not text; give a UTF-8 text file")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 4:  # not just a character cut at the end of the sample
            raise BigmodelError(
                f"{what} {path} is not UTF-8 (byte {e.start}); convert it, e.g. iconv -t utf-8"
            ) from None
    return path
