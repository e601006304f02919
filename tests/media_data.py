"""Tiny generated raw layouts for the media stage tests: videos whose frames encode their own index,
solid patches at known boxes, and the real fixtures/sample.wav as soundtrack with labels from sample.rttm."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages.media.shards import binary_to_array, metadata
from stages.media.video_io import Planes, ffmpeg_exe

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"
SAMPLE_WAV = FIXTURES / "sample.wav"
SAMPLE_RTTM = FIXTURES / "sample.rttm"
WIDTH, HEIGHT, FPS = 320, 180, 25
INDEX_BITS, INDEX_BAND = 10, 20
BOX_RATE = 20.0  # annotated boxes per second, as AVA


def index_band(luma: np.ndarray) -> int:
    """Read back the frame index written by `render_frame` (white/black stripes = bits) from the Y plane."""
    stripe = luma.shape[1] // INDEX_BITS
    return sum(1 << b for b in range(INDEX_BITS)
               if luma[4:INDEX_BAND - 4, b * stripe + 4:(b + 1) * stripe - 4].mean() > 128)


def patch_red(index: int) -> int:
    """Red level of every patch in frame `index` (so a crop tells which frame it came from)."""
    return 30 + (7 * index) % 190


@dataclass
class Track:
    """One face track: a static box shown (and annotated) from `start` to `end` seconds."""

    number: int
    box: tuple[float, float, float, float]  # normalised x1, y1, x2, y2
    start: float
    end: float
    identity: str | None  # None = no APES row; "EXTRA_OR_AMBIGUOUS" = ambiguous
    speaker: str | None = None  # RTTM speaker whose turns are this track's SPEAKING_AUDIBLE
    green: int = 200

    def stamps(self) -> np.ndarray:
        """Annotated timestamps, 20 per second."""
        count = int(round((self.end - self.start) * BOX_RATE)) + 1
        return np.round(self.start + np.arange(count) / BOX_RATE, 3)


@dataclass
class Video:
    """A generated video and its annotations."""

    video_id: str
    split: str
    seconds: float
    tracks: list[Track]
    audio: str = "sample"  # sample | none | empty
    container: str = "mp4"
    faststart: bool = False
    extra_rows: list[str] = field(default_factory=list)

    def entity(self, track: Track) -> str:
        """AVA entity id of a track."""
        return f"{self.video_id}_0000_0030:{track.number}"


def rttm_turns(speaker: str) -> list[tuple[float, float]]:
    """(start, end) of every turn of `speaker` in sample.rttm."""
    turns = []
    for line in SAMPLE_RTTM.read_text().splitlines():
        parts = line.split()
        if parts and parts[7] == speaker:
            turns.append((float(parts[3]), float(parts[3]) + float(parts[4])))
    return turns


def label_at(track: Track, stamp: float) -> str:
    """SPEAKING_AUDIBLE inside one of the track's speaker turns, else NOT_SPEAKING."""
    if track.speaker and any(a <= stamp <= b for a, b in rttm_turns(track.speaker)):
        return "SPEAKING_AUDIBLE"
    return "NOT_SPEAKING"


def pixel_box(box: tuple[float, float, float, float]) -> tuple[int, int, int, int]:
    """Pixel rectangle (x0, y0, x1, y1) a normalised box is painted at."""
    x1, y1, x2, y2 = box
    return int(round(x1 * WIDTH)), int(round(y1 * HEIGHT)), int(round(x2 * WIDTH)), int(round(y2 * HEIGHT))


def render_frame(index: int, tracks: list[Track]) -> np.ndarray:
    """Grey frame, index stripes on top, a solid patch for every track on screen."""
    frame = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    stripe = WIDTH // INDEX_BITS
    for bit in range(INDEX_BITS):
        frame[:INDEX_BAND, bit * stripe:(bit + 1) * stripe] = 255 if (index >> bit) & 1 else 0
    t = index / FPS
    for track in tracks:
        if track.start - 0.5 / FPS <= t <= track.end + 0.5 / FPS:
            x0, y0, x1, y1 = pixel_box(track.box)
            frame[y0:y1, x0:x1] = (patch_red(index), track.green, 255 - track.green)
    return frame


def planes_of(rgb: np.ndarray) -> Planes:
    """The YUV 4:2:0 planes of an RGB frame (as the decoder hands them to crop)."""
    height, width = rgb.shape[:2]
    return Planes.in_buffer(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).reshape(-1), width, height)


def write_video(path: Path, video: Video) -> None:
    """Encode the frames (H.264, 25 fps) with sample.wav at 48 kHz (or no / a 0.3 s audio stream)."""
    frames = int(round(video.seconds * FPS))
    cmd = [ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
           "-s", f"{WIDTH}x{HEIGHT}", "-r", str(FPS), "-i", "-"]
    if video.audio == "sample":
        cmd += ["-i", str(SAMPLE_WAV), "-c:a", "aac", "-ar", "48000", "-t", f"{video.seconds}"]
    elif video.audio == "empty":  # an audio stream without a single sample (Matroska keeps such a stream)
        cmd += ["-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-filter_complex", "[1:a]atrim=0:0[a]",
                "-map", "0:v", "-map", "[a]", "-c:a", "pcm_s16le", "-t", f"{video.seconds}"]
    cmd += ["-c:v", "libx264", "-crf", "12", "-g", "25", "-pix_fmt", "yuv420p"]
    if video.faststart:
        cmd += ["-movflags", "+faststart"]
    cmd.append(str(path))
    process = subprocess.Popen(cmd, stdin=subprocess.PIPE)
    for index in range(frames):
        process.stdin.write(render_frame(index, video.tracks).tobytes())
    process.stdin.close()
    assert process.wait() == 0


def csv_rows(video: Video) -> list[str]:
    """AVA-ActiveSpeaker rows of a video (no header), tracks interleaved by time as in AVA."""
    rows = []
    for track in video.tracks:
        x1, y1, x2, y2 = track.box
        for stamp in track.stamps():
            rows.append((stamp, f"{video.video_id},{stamp:.3f},{x1:.6f},{y1:.6f},{x2:.6f},{y2:.6f},"
                                f"{label_at(track, stamp)},{video.entity(track)}"))
    return [row for _, row in sorted(rows, key=lambda r: r[0])] + video.extra_rows


def write_raw(root: Path, videos: list[Video]) -> Path:
    """Write the raw layout (docs/data.md) of `videos` under `root`."""
    (root / "videos").mkdir(parents=True, exist_ok=True)
    apes: dict[str, list[str]] = {"train": [], "val": []}
    for video in videos:
        write_video(root / "videos" / f"{video.video_id}.{video.container}", video)
        folder = root / "annotations" / f"ava_activespeaker_{video.split}_v1.0"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{video.video_id}-activespeaker.csv").write_text("\n".join(csv_rows(video)) + "\n")
        for track in video.tracks:
            if track.identity is not None:
                entity = video.entity(track).replace(":", "_")
                apes[video.split].append(f"{entity},{video.video_id},{track.identity}")
    for split, rows in apes.items():
        (root / f"APES-{split}.csv").write_text("entity_id,video_id,identity\n" + "\n".join(rows) + "\n")
    return root


def standard_videos() -> list[Video]:
    """vidA (train, 18 s, tracks of two RTTM speakers, an ambiguous and an unlabelled track, a box at the
    frame corner, a zero-area row) and vidB (val, 4 s)."""
    tracks_a = [
        Track(1, (40 / 320, 50 / 180, 100 / 320, 110 / 180), 6.0, 15.0, "vidA_p1", "speaker90", green=200),
        Track(2, (200 / 320, 60 / 180, 260 / 320, 120 / 180), 6.0, 15.0, "vidA_p2", "speaker91", green=120),
        Track(3, (120 / 320, 40 / 180, 170 / 320, 100 / 180), 2.0, 4.0, "EXTRA_OR_AMBIGUOUS", green=60),
        Track(4, (120 / 320, 100 / 180, 170 / 320, 160 / 180), 2.0, 3.0, None, green=90),
        Track(5, (280 / 320, 130 / 180, 1.0, 1.0), 15.5, 16.5, "vidA_p1", "speaker90", green=160),
    ]
    zero_area = "vidA,16.600,0.500000,0.500000,0.500000,0.700000,NOT_SPEAKING,vidA_0000_0030:5"
    tracks_b = [
        Track(1, (60 / 320, 40 / 180, 120 / 320, 100 / 180), 1.0, 3.0, "vidB_p1", "speaker90", green=200),
        Track(2, (180 / 320, 40 / 180, 240 / 320, 100 / 180), 1.0, 3.0, "vidB_p2", "speaker91", green=120),
    ]
    return [Video("vidA", "train", 18.0, tracks_a, extra_rows=[zero_area]),
            Video("vidB", "val", 4.0, tracks_b)]


def write_params(path: Path, text: str = "") -> Path:
    """A params.yaml for tests (defaults plus `text`), independent of the project's own."""
    path.write_text("seed: 0\n" + text)
    return path


def cli(*args: str):
    """Invoke apes-cli in process; returns click's Result."""
    from typer.testing import CliRunner

    from apes_cli.main import app

    return CliRunner().invoke(app, [str(a) for a in args])


def leftovers(directory: Path) -> list[Path]:
    """Temporary files a killed or failed run would leave behind."""
    return sorted(directory.rglob(".*.tmp")) if directory.exists() else []


def iter_shards(directory: Path, split: str, column: str) -> Iterator[tuple[np.ndarray, pa.Table]]:
    """Per video shard of a split: the `image` (uint8 RGB) or `mel` (float32) column as an array, and the rest."""
    for path in sorted((Path(directory) / split).glob("*.parquet")):
        table = pq.read_table(path)
        meta = metadata(table.schema)
        if column == "image":
            shape, dtype = (int(meta["crop_size"]), int(meta["crop_size"]), 3), np.uint8
        else:
            shape, dtype = (int(meta["n_mels"]), int(meta["frames"])), np.float32
        yield binary_to_array(table[column], shape, dtype, path), table.drop_columns([column])


def read_shards(directory: Path, split: str, column: str) -> tuple[np.ndarray, pa.Table]:
    """Every shard of a split at once, as `iter_shards` gives them, concatenated in video order."""
    parts = list(iter_shards(directory, split, column))
    assert parts, f"no shards in {directory}/{split}"
    return np.concatenate([a for a, _ in parts]), pa.concat_tables([t.replace_schema_metadata(None) for _, t in parts])
