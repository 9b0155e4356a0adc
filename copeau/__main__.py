"""`python -m copeau` is the `copeau` command."""

from copeau.cli import main

main()
