"""One run of the grid: its identity and name, so train, evaluate and dvc.yaml agree on models/<run>/ and metrics."""

from __future__ import annotations

from dataclasses import dataclass

from stages.core.errors import ConfigError

SPEECH_MODALITIES = ("voice", "crossmodal")
SPEECH_TASK = "seen_heard"


@dataclass(frozen=True)
class Run:
    """One cell of the grid; `sampling` is None for the untrained network; the seed joins the name only when asked
    (several seeds side by side). A run that cannot exist is refused when made."""

    modality: str
    sampling: str | None
    task: str
    seed: int
    seed_in_name: bool = False

    def __post_init__(self) -> None:
        """Voice and cross-modal runs need speech: only the seen_heard task has it for every tracklet."""
        if self.modality in SPEECH_MODALITIES and self.task != SPEECH_TASK:
            raise ConfigError("--task", f"modality '{self.modality}' needs task '{SPEECH_TASK}' (task '{self.task}' "
                              "holds silent tracks without voice snippets)", "command line")

    @property
    def name(self) -> str:
        """<modality>_<sampling>_<task>[_seed<N>], 'untrained' standing in for the sampling of a random-weight net."""
        base = f"{self.modality}_{self.sampling or 'untrained'}_{self.task}"
        return f"{base}_seed{self.seed}" if self.seed_in_name else base
