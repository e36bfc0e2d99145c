"""``python -m dlm_cli`` runs the CLI."""

from .cli import main

main()
