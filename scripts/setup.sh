#!/usr/bin/env bash
# Create .venv and install apes with its pinned dependencies (idempotent: skips when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=".venv/.apes-setup-$(cat pyproject.toml | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
    # torch first, from the versions named in pyproject, so pip never reaches for a newer CUDA build
    .venv/bin/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0 \
        2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -m pip install --quiet -e ".[test]" 2>&1 | grep -v "^WARNING: Location" || true
    # Resemblyzer (speaker embeddings for `apes-cli search`) without its declared deps: they would compile
    # webrtcvad and fetch the Python-2 `typing` backport; pyproject.toml lists what it really needs.
    .venv/bin/python -m pip install --quiet --no-deps resemblyzer==0.1.4 2>&1 | grep -v "^WARNING: Location" || true
    .venv/bin/python -c "import dlib, resemblyzer, silero_vad, webrtcvad"
    .venv/bin/python -c "import torch, torchvision, torchaudio, dvc, typer, apes_cli, stages" 
    rm -f .venv/.apes-setup-* && touch "$stamp"
fi
# No network here: never let DVC try to phone home.
.venv/bin/dvc config --local core.analytics false >/dev/null 2>&1 || true
