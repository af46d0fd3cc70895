"""`python -m qinfra` runs the CLI."""

from qinfra.cli import main

main()
