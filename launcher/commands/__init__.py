"""One module per command, each a library function the CLI calls."""
