"""One module per subcommand: NAME, HELP and a Typer `command` function."""
