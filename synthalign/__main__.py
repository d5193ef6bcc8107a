"""``python -m synthalign``: the same CLI as the ``synthalign`` command."""

from synthalign.cli import main

main()
