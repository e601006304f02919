"""Allow `python -m apes_cli`."""

from apes_cli.main import app

app(prog_name="apes-cli")
