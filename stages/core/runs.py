"""One run of the grid: its identity and name, so train, evaluate and dvc.yaml agree on models/<run>/ and metrics."""

from __future__ import annotations

from dataclasses import dataclass

from stages.core.choices import Modality, Sampling, Task, check_task_fits


@dataclass(frozen=True)
class Run:
    """One cell of the grid; `sampling` is None for the untrained network; the seed joins the name only when asked
    (several seeds side by side). A run that cannot exist is refused when made."""

    modality: Modality
    sampling: Sampling | None
    task: Task
    seed: int
    seed_in_name: bool = False

    def __post_init__(self) -> None:
        """Plain strings become their choices; a speech modality on a task with silent tracks is refused."""
        object.__setattr__(self, "modality", Modality(self.modality))
        object.__setattr__(self, "sampling", None if self.sampling is None else Sampling(self.sampling))
        object.__setattr__(self, "task", Task(self.task))
        check_task_fits(self.modality, self.task)

    @property
    def name(self) -> str:
        """<modality>_<sampling>_<task>[_seed<N>], 'untrained' standing in for the sampling of a random-weight net."""
        base = f"{self.modality}_{self.sampling or 'untrained'}_{self.task}"
        return f"{base}_seed{self.seed}" if self.seed_in_name else base
