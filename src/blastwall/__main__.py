"""``python -m blastwall`` is the ``blastwall`` command."""

from blastwall.cli.main import entry

entry()
