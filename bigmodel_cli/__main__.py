"""`python -m bigmodel_cli ...`, the form `accelerate launch -m bigmodel_cli` uses."""

from bigmodel_cli.cli import main

main()
