"""One module per command, side by side: each reads as the story of its job and imports from the
packages beneath it (`trainer`, `mlm`, `classification`), never from another command."""
