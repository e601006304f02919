"""One str-Enum per choice: params.yaml, the Typer options and the code name each choice by the same values."""

from __future__ import annotations

from enum import StrEnum

from stages.core.errors import ConfigError


class Task(StrEnum):
    """Benchmark task: every labelled face track (seen), or the tracks with audible speech (seen_heard)."""

    seen_heard = "seen_heard"
    seen = "seen"


class Modality(StrEnum):
    """Which network: faces, voices, or both with a joint projection."""

    face = "face"
    voice = "voice"
    crossmodal = "crossmodal"

    @property
    def needs_speech(self) -> bool:
        """Voice and cross-modal embed speech: only the seen_heard task has it for every tracklet."""
        return self is not Modality.face


class Sampling(StrEnum):
    """Triplet sampling strategy (paper Table 2)."""

    weak = "weak"
    within = "within"
    across = "across"


class Method(StrEnum):
    """Where a benchmark metrics file's embeddings came from (its `method`; the report's rows)."""

    random = "random"
    untrained = "untrained"
    pretrained = "pretrained"
    trained = "trained"

    @property
    def seedless(self) -> bool:
        """The exact Random expectation and the fixed pretrained embedders do not depend on a seed."""
        return self in (Method.random, Method.pretrained)


class Source(StrEnum):
    """data.source: the `apes-cli` command that fills the raw layout."""

    synth = "synth"
    download = "download"


class CropFormat(StrEnum):
    """crop.format: how crop shards store pixels (docs/media.md)."""

    raw = "raw"
    jpeg = "jpeg"


class Profile(StrEnum):
    """train.profile: params.yaml's schedule, the paper's text (section 4.1) or the authors' released code."""

    embedded = "embedded"
    paper = "paper"
    authors = "authors"


class Mining(StrEnum):
    """train.mining: plain triplets (the paper) or P x K batches mined in the batch."""

    none = "none"
    batch_hard = "batch_hard"
    semi_hard = "semi_hard"


class Precision(StrEnum):
    """train.precision: auto (bf16 autocast on CUDA, fp32 on CPU), bf16 or fp32."""

    auto = "auto"
    bf16 = "bf16"
    fp32 = "fp32"


class CrossmodalInit(StrEnum):
    """train.crossmodal_init: cross-modal streams start from scratch or from the face and voice runs."""

    scratch = "scratch"
    single_runs = "single_runs"


class Device(StrEnum):
    """Where to train: CUDA when present (auto), cpu or cuda."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


CROP_SIZE_RANGE = (16, 512)  # crop.size and `apes-cli crop --size`: an even side in pixels within these


def check_task_fits(modality: Modality | str, task: Task | str, key: str = "--task") -> None:
    """Refuse a speech modality on a task whose tracklets may be silent."""
    if Modality(modality).needs_speech and Task(task) is not Task.seen_heard:
        raise ConfigError(key, f"modality '{modality}' needs task '{Task.seen_heard}' (task '{task}' holds silent "
                          "tracks without voice snippets)", "command line")
