"""How a run of the grid is named, so train, evaluate and dvc.yaml agree on models/<run>/ and metrics files."""

from __future__ import annotations


def run_name(modality: str, sampling: str | None, task: str, seed: int, seed_in_name: bool) -> str:
    """<modality>_<sampling>_<task>[_seed<N>]; 'untrained' stands in for the sampling of a random-weight net."""
    base = f"{modality}_{sampling or 'untrained'}_{task}"
    return f"{base}_seed{seed}" if seed_in_name else base
