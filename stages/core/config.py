"""Read and validate params.yaml in one place: typed sections, unknown keys and bad values are errors."""

from __future__ import annotations

import dataclasses
import enum
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from stages.core.choices import (
    CROP_SIZE_RANGE,
    CropFormat,
    CrossmodalInit,
    Mining,
    Modality,
    Precision,
    Profile,
    Sampling,
    Source,
    Task,
)
from stages.core.errors import ConfigError


def _check(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


@dataclass(frozen=True)
class DataParams:
    """Which stage's raw layout the pipeline reads: each source writes its own folder."""

    source: Source = Source.synth

    @property
    def raw_dir(self) -> str:
        """data/raw_synth or data/raw_download (dvc.yaml: data/raw_${data.source}): what `decode` reads."""
        return f"data/raw_{self.source}"

    def validate(self, key: str) -> None:
        """Every value is checked by its type (a Source)."""


@dataclass(frozen=True)
class SynthParams:
    """Sizes and difficulty knobs of the embedded mini-APES generator."""

    train_videos: int = 12
    val_videos: int = 4
    shots_per_video: int = 65
    val_shots_scale: tuple[float, float] = (1.0, 1.0)
    shot_seconds: tuple[float, float] = (1.0, 2.5)
    intro_seconds: float = 2.0
    identities_per_video: tuple[int, int] = (8, 14)
    width: int = 640
    height: int = 360
    fps: int = 20
    silent_share: float = 0.25
    ambiguous_share: float = 0.08
    not_audible_share: float = 0.05
    offscreen_speech_share: float = 0.1
    nuisance: float = 0.7
    voice_similarity: float = 0.85
    snr_db: tuple[float, float] = (-5.0, 5.0)
    music_share: float = 0.7
    overlap_share: float = 0.15
    reverb: float = 0.7
    workers: int = 0

    def validate(self, key: str) -> None:
        _check(self.train_videos >= 1, f"{key}.train_videos", "expected at least 1")
        _check(self.val_videos >= 1, f"{key}.val_videos", "expected at least 1")
        _check(self.shots_per_video >= 1, f"{key}.shots_per_video", "expected at least 1")
        _check(0 < self.val_shots_scale[0] <= self.val_shots_scale[1], f"{key}.val_shots_scale",
               "expected 0 < min <= max")
        _check(0 < self.shot_seconds[0] <= self.shot_seconds[1], f"{key}.shot_seconds", "expected 0 < min <= max")
        _check(self.intro_seconds >= 0, f"{key}.intro_seconds", "expected >= 0")
        lo, hi = self.identities_per_video
        _check(2 <= lo <= hi, f"{key}.identities_per_video", "expected 2 <= min <= max")
        _check(self.width >= 64 and self.height >= 64, f"{key}.width", "expected a frame of at least 64x64")
        _check(self.width % 2 == 0 and self.height % 2 == 0, f"{key}.width",
               "expected an even width and height (H.264 4:2:0)")
        _check(1 <= self.fps <= 60, f"{key}.fps", "expected 1..60")
        for name in ("silent_share", "ambiguous_share", "not_audible_share", "offscreen_speech_share",
                     "nuisance", "voice_similarity", "music_share", "overlap_share", "reverb"):
            _check(0.0 <= getattr(self, name) <= 1.0, f"{key}.{name}", "expected a value in [0, 1]")
        _check(self.snr_db[0] <= self.snr_db[1], f"{key}.snr_db", "expected min <= max")
        _check(self.workers >= 0, f"{key}.workers", "expected >= 0 (0 = one per core)")

    def shots(self, split: str, index: int) -> int:
        """Shots of one video: train videos all alike, val video i scaled evenly from min to max of the spread."""
        if split != "val":
            return self.shots_per_video
        lo, hi = self.val_shots_scale
        scale = lo + (hi - lo) * index / max(1, self.val_videos - 1)
        return max(1, int(round(self.shots_per_video * scale)))


@dataclass(frozen=True)
class DownloadParams:
    """Where the real AVA videos, annotations and APES labels come from."""

    base_url: str = "https://s3.amazonaws.com/ava-dataset"
    apes_url: str = "https://filedn.com/l0kNCNuXuEq70c3iUHsXxJ7/APES"
    file_list: str = "ava_speech_file_names_v1.txt"
    limit: int = 0
    workers: int = 4
    retries: int = 5
    timeout_s: float = 60.0
    backoff_s: float = 1.0
    train_archive_md5: str = "0e6ebaacfb3a554199e319e0c26a1ec0"
    val_archive_md5: str = "c00210f1d62caaf32759afb92b4562cc"

    def validate(self, key: str) -> None:
        _check(self.base_url.startswith(("http://", "https://")), f"{key}.base_url", "expected an http(s) URL")
        _check(self.apes_url.startswith(("http://", "https://")), f"{key}.apes_url", "expected an http(s) URL")
        _check(bool(self.file_list) and "/" not in self.file_list, f"{key}.file_list", "expected a file name")
        _check(self.backoff_s >= 0, f"{key}.backoff_s", "expected >= 0 seconds")
        for name in ("train_archive_md5", "val_archive_md5"):
            value = getattr(self, name)
            _check(value == "" or re.fullmatch(r"[0-9a-f]{32}", value) is not None, f"{key}.{name}",
                   "expected 32 lowercase hex digits, or empty to skip the check")
        _check(self.limit >= 0, f"{key}.limit", "expected >= 0 (0 = all)")
        _check(self.workers >= 1, f"{key}.workers", "expected >= 1")
        _check(self.retries >= 0, f"{key}.retries", "expected >= 0")
        _check(self.timeout_s > 0, f"{key}.timeout_s", "expected > 0")


@dataclass(frozen=True)
class DecodeParams:
    """Audio extraction and frame planning."""

    workers: int = 0
    sample_rate: int = 16000
    audio_margin_seconds: float = 1.0

    def validate(self, key: str) -> None:
        _check(self.workers >= 0, f"{key}.workers", "expected >= 0 (0 = one per core)")
        _check(8000 <= self.sample_rate <= 48000, f"{key}.sample_rate", "expected 8000..48000")
        _check(0.25 <= self.audio_margin_seconds <= 10.0, f"{key}.audio_margin_seconds",
               "expected 0.25..10 seconds (snippets of short speech segments reach past the boxes)")


@dataclass(frozen=True)
class CropParams:
    """Face crops cut from the annotated boxes."""

    size: int = 64
    margin: float = 0.1
    format: CropFormat = CropFormat.raw
    quality: int = 90
    workers: int = 0

    def validate(self, key: str) -> None:
        lo, hi = CROP_SIZE_RANGE
        _check(lo <= self.size <= hi and self.size % 2 == 0, f"{key}.size", f"expected an even {lo}..{hi} pixels")
        _check(1 <= self.quality <= 100, f"{key}.quality", "expected a JPEG quality 1..100")
        _check(0.0 <= self.margin <= 1.0, f"{key}.margin", "expected a value in [0, 1]")
        _check(self.workers >= 0, f"{key}.workers", "expected >= 0 (0 = one per core)")


@dataclass(frozen=True)
class MelParams:
    """Log-mel spectrograms of short voice snippets."""

    snippet_seconds: float = 0.45
    snippet_hop_seconds: float = 0.15
    n_mels: int = 64
    n_fft: int = 512
    win_length: int = 400
    hop_length: int = 160
    batch_size: int = 2048
    workers: int = 0

    def validate(self, key: str) -> None:
        _check(0.05 <= self.snippet_seconds <= 5.0, f"{key}.snippet_seconds", "expected 0.05..5 seconds")
        _check(self.snippet_hop_seconds > 0, f"{key}.snippet_hop_seconds", "expected > 0")
        _check(8 <= self.n_mels <= 256, f"{key}.n_mels", "expected 8..256")
        _check(self.win_length <= self.n_fft, f"{key}.win_length", "expected <= n_fft")
        _check(self.hop_length >= 1, f"{key}.hop_length", "expected >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", "expected >= 1")
        _check(self.workers >= 0, f"{key}.workers", "expected >= 0 (0 = one per core)")


@dataclass(frozen=True)
class TripletParams:
    """Which tasks and sampling strategies get sample sets."""

    tasks: tuple[Task, ...] = tuple(Task)
    strategies: tuple[Sampling, ...] = tuple(Sampling)

    def validate(self, key: str) -> None:
        """Every value is checked by its type (Task, Sampling)."""


@dataclass(frozen=True)
class OptimParams:
    """Adam + StepLR schedule of one modality."""

    lr: float = 3e-4
    epochs: int = 4
    step_epochs: int = 3

    def validate(self, key: str) -> None:
        _check(0 < self.lr < 1, f"{key}.lr", "expected 0 < lr < 1")
        _check(self.epochs >= 1, f"{key}.epochs", "expected >= 1")
        _check(self.step_epochs >= 1, f"{key}.step_epochs", "expected >= 1")


@dataclass(frozen=True)
class TrainParams:
    """Triplet training of the face, voice and cross-modal networks."""

    profile: Profile = Profile.embedded
    margin: float = 1.0
    batch_size: int = 48
    mining: Mining = Mining.none
    normalize: bool = False
    pk_k: int = 4
    threads: int = 2
    workers: int = 0
    pretrained: str = ""
    steps_per_epoch: int = 14
    precision: Precision = Precision.auto
    compile: bool = False
    crossmodal_init: CrossmodalInit = CrossmodalInit.scratch
    max_crops_per_track: int = 16
    val_every: int = 0
    val_items_per_track: int = 2
    face: OptimParams = OptimParams(lr=1e-3)
    voice: OptimParams = OptimParams(lr=2e-3)
    crossmodal: OptimParams = OptimParams(lr=3e-4, epochs=2, step_epochs=2)

    def validate(self, key: str) -> None:
        _check(self.margin > 0, f"{key}.margin", "expected > 0")
        _check(self.batch_size >= 3, f"{key}.batch_size", "expected >= 3")
        _check(self.pk_k >= 2, f"{key}.pk_k", "expected >= 2")
        _check(self.threads >= 1, f"{key}.threads", "expected >= 1")
        _check(self.workers >= 0, f"{key}.workers", "expected >= 0")
        _check(self.steps_per_epoch >= 1, f"{key}.steps_per_epoch", "expected >= 1")
        _check(self.max_crops_per_track >= 0, f"{key}.max_crops_per_track", "expected >= 0 (0 = all)")
        _check(self.val_every >= 0, f"{key}.val_every", "expected >= 0 (0 = the last epoch only)")
        _check(self.val_items_per_track >= 1, f"{key}.val_items_per_track", "expected >= 1")
        for modality in Modality:
            self.optim(modality).validate(f"{key}.{modality}")

    def optim(self, modality: Modality | str) -> OptimParams:
        """The optimiser settings of one modality's runs."""
        return getattr(self, Modality(modality).value)


@dataclass(frozen=True)
class EvaluateParams:
    """How tracklet embeddings are formed for ranking."""

    crops_per_track: int = 8
    snippets_per_track: int = 8
    batch_size: int = 256

    def validate(self, key: str) -> None:
        _check(self.crops_per_track >= 1, f"{key}.crops_per_track", "expected >= 1")
        _check(self.snippets_per_track >= 1, f"{key}.snippets_per_track", "expected >= 1")
        _check(self.batch_size >= 1, f"{key}.batch_size", "expected >= 1")


@dataclass(frozen=True)
class PretrainedBaselineParams:
    """How the pretrained embedders (the report's Pretrained rows) see a tracklet."""

    crops_per_track: int = 2
    snippets_per_track: int = 16

    def validate(self, key: str) -> None:
        _check(self.crops_per_track >= 1, f"{key}.crops_per_track", "expected >= 1")
        _check(self.snippets_per_track >= 1, f"{key}.snippets_per_track", "expected >= 1")


@dataclass(frozen=True)
class AsdParams:
    """The active speaker detection benchmark (stage asd: docs/evaluation.md)."""

    workers: int = 0

    def validate(self, key: str) -> None:
        _check(self.workers >= 0, f"{key}.workers", "expected >= 0 (0 = one per core)")


@dataclass(frozen=True)
class ReportParams:
    """Seeds whose runs the report aggregates (mean and spread per cell)."""

    seeds: tuple[int, ...] = (0,)

    def validate(self, key: str) -> None:
        _check(len(self.seeds) >= 1, f"{key}.seeds", "expected at least one seed")


@dataclass(frozen=True)
class Params:
    """Everything in params.yaml."""

    seed: int = 0
    data: DataParams = DataParams()
    synth: SynthParams = SynthParams()
    download: DownloadParams = DownloadParams()
    decode: DecodeParams = DecodeParams()
    crop: CropParams = CropParams()
    mel: MelParams = MelParams()
    triplets: TripletParams = TripletParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()
    pretrained_baselines: PretrainedBaselineParams = PretrainedBaselineParams()
    asd: AsdParams = AsdParams()
    report: ReportParams = ReportParams()

    def validate(self, key: str = "") -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if hasattr(value, "validate"):
                value.validate(f.name)


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Convert one YAML value to the annotated type, or raise ConfigError naming `key`."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {type(value).__name__}")
        return _build(hint, value, key)
    if origin is tuple:
        args = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(key, f"expected a list of {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (typing.Union, types.UnionType):
        last: ConfigError | None = None
        for arg in typing.get_args(hint):
            try:
                return _coerce(value, arg, key)
            except ConfigError as error:
                last = error
        raise last  # type: ignore[misc]
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        if not isinstance(value, str) or value not in {choice.value for choice in hint}:
            raise ConfigError(key, f"expected one of {', '.join(choice.value for choice in hint)}, got {value!r}")
        return hint(value)
    if hint is type(None):
        if value is not None:
            raise ConfigError(key, f"expected null, got {value!r}")
        return None
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(key, f"expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {value!r}")
        return value
    raise ConfigError(key, f"unsupported type {hint}")


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    """Build dataclass `cls` from a mapping, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    for name in raw:
        if name not in known:
            key = f"{prefix}.{name}" if prefix else str(name)
            raise ConfigError(key, f"unknown key (known keys here: {', '.join(sorted(known))})")
    kwargs = {}
    for name, value in raw.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    return cls(**kwargs)


def params_from_dict(raw: dict[str, Any] | None, file: str | Path = "params.yaml") -> Params:
    """Validate a parsed params mapping."""
    try:
        params = _build(Params, raw or {}, "")
        params.validate()
    except ConfigError as error:
        if str(file) != "params.yaml":
            raise ConfigError(error.key, error.message, file) from None
        raise
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml; a missing file is an error (the defaults alone are never a run's config)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError("(file)", "not found; run from the project root or pass --params", path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ConfigError("(file)", f"not valid YAML: {error}", path) from None
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError("(file)", "expected a mapping at the top level", path)
    return params_from_dict(raw, path)


__all__ = ["Params", "load_params", "params_from_dict"]
