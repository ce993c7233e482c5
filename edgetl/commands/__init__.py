"""One module per ``edgetl`` subcommand; see :mod:`edgetl.cli`."""
