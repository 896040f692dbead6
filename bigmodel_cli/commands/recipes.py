"""`bigmodel recipes list | show | copy`: the shipped recipes."""

from __future__ import annotations

from pathlib import Path

from bigmodel_cli.errors import BigmodelError
from bigmodel_cli.recipe import find_recipe, list_recipes


def list_command() -> None:
    for name in list_recipes():
        first = find_recipe(name).read_text(encoding="utf-8").splitlines()[0].lstrip("# ")
        print(f"{name:32s} {first}")


def show_command(name: str) -> None:
    print(find_recipe(name).read_text(encoding="utf-8"), end="")


def copy_command(name: str, dest: Path) -> None:
    """Copy a shipped recipe; never overwrites an existing file."""
    source = find_recipe(name)
    target = dest / source.name if dest.is_dir() else dest
    if target.exists():
        raise BigmodelError(f"{target} already exists; choose another destination")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    print(target)
