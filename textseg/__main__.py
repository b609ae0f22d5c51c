"""``python -m textseg`` runs the CLI."""

from textseg.cli.main import main

main()
