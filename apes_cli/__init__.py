"""The apes-cli command line: Typer app, options, progress bars and error messages."""

import os

# OpenMP threads that spin while waiting made 2-thread training ~4x slower on a shared 2-core CPU
# (measured); this only takes effect when set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
