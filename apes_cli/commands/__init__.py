"""One module per subcommand: NAME, HELP and a Typer `command` function.

Each command imports its stage module inside `command`, not at the top: the stage modules bring torch, ffmpeg
helpers or dlib, and `apes-cli --help` (which imports every command module) must start without them.
"""
