"""The `nodule-net` command: dispatch, one module per subcommand, and the one-line exits every stage shares."""
