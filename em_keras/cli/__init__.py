"""The ``em-keras`` command: one module per subcommand."""
