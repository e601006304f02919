"""The apes-cli command line: Typer app, options, progress bars and error messages."""
