"""`python -m qinfra` runs the CLI."""

from qinfra.cli.main import main

main()
