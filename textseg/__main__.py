"""``python -m textseg`` runs the CLI."""

from textseg.cli import main

main()
