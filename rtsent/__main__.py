"""Entry point for `python -m rtsent`."""

from rtsent.cli import main

main()
