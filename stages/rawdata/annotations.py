"""The one loader of raw annotations: AVA-ActiveSpeaker CSVs, APES identity CSVs and the manifest.

Every check names the file, the 1-based line and the field. Which problems are errors and which are
counted skips is documented in docs/data.md.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from stages.core.errors import DataError
from stages.core.schemas import BOXES
from stages.rawdata.layout import AMBIGUOUS, AVA_LABELS, RawLayout, check_video_id

AVA_COLUMNS = ("video_id", "frame_timestamp", "entity_box_x1", "entity_box_y1",
               "entity_box_x2", "entity_box_y2", "label", "entity_id")
AUGMENTED_COLUMNS = AVA_COLUMNS + ("label_id", "instance_id")
_BOX_FIELDS = ("entity_box_x1", "entity_box_y1", "entity_box_x2", "entity_box_y2")


@dataclass(frozen=True)
class Identity:
    """One APES row: the identity of a face track."""

    video_id: str
    identity: str
    line: int


def first_line(path: Path) -> str:
    """The first line of a text file, stripped."""
    with path.open("r", newline="") as handle:
        return handle.readline().strip()


def find_bad_row(path: Path, expected: int, skip: int) -> DataError:
    """Scan with the csv module to locate the first row whose column count is wrong."""
    with path.open("r", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if number <= skip or not row:
                continue
            if len(row) != expected:
                return DataError(path, f"expected {expected} columns, found {len(row)}", number)
    return DataError(path, "could not be parsed as CSV")


def parse_floats(column: pa.Array, path: Path, field: str, offset: int) -> np.ndarray:
    """Parse a string column as float64, naming the first line that is not a number."""
    try:
        return pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for index, text in enumerate(column.to_pylist()):
            try:
                float(text)
            except (TypeError, ValueError):
                raise DataError(path, f"expected a number, found {text!r}", index + offset, field) from None
        raise


def read_ava_csv(path: str | Path, split: str) -> pa.Table:
    """Parse one AVA-ActiveSpeaker CSV (official 8 columns, no header; or the augmented 10-column variant)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    first = first_line(path)
    if not first:
        raise DataError(path, "empty file: expected AVA-ActiveSpeaker rows")
    has_header = first.split(",")[0].strip() == "video_id"
    if has_header:
        names = [c.strip() for c in first.split(",")]
        if tuple(names) not in (AVA_COLUMNS, AUGMENTED_COLUMNS):
            raise DataError(path, f"unexpected header {names}: expected {list(AUGMENTED_COLUMNS)}", 1)
        columns, skip = names, 1
    else:
        columns, skip = list(AVA_COLUMNS), 0
    try:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=columns, skip_rows=skip),
            convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                                 strings_can_be_null=False),
            parse_options=pacsv.ParseOptions(newlines_in_values=False),
        )
    except pa.ArrowInvalid:
        raise find_bad_row(path, len(columns), skip) from None
    offset = skip + 1  # row index -> 1-based line number
    n = table.num_rows
    if n == 0:
        raise DataError(path, "no rows: expected AVA-ActiveSpeaker rows")

    video_ids = table["video_id"].to_pylist()
    for index, vid in enumerate(video_ids):
        if index == 0 or vid != video_ids[index - 1]:
            check_video_id(vid, path, index + offset)

    stamps = parse_floats(table["frame_timestamp"].combine_chunks(), path, "frame_timestamp", offset)
    bad = np.flatnonzero(~np.isfinite(stamps) | (stamps < 0))
    if bad.size:
        i = int(bad[0])
        raise DataError(path, f"expected a finite timestamp >= 0 seconds, found {stamps[i]!r}",
                        i + offset, "frame_timestamp")

    box = {}
    for name in _BOX_FIELDS:
        values = parse_floats(table[name].combine_chunks(), path, name, offset)
        bad = np.flatnonzero(~np.isfinite(values) | (values < 0.0) | (values > 1.0))
        if bad.size:
            i = int(bad[0])
            raise DataError(path, f"expected a normalised coordinate in [0, 1], found {values[i]!r}",
                            i + offset, name)
        box[name] = values
    for lo, hi in (("entity_box_x1", "entity_box_x2"), ("entity_box_y1", "entity_box_y2")):
        bad = np.flatnonzero(box[hi] < box[lo])
        if bad.size:
            i = int(bad[0])
            raise DataError(path, f"expected {hi} >= {lo}, found {box[hi][i]} < {box[lo][i]}", i + offset, hi)

    labels = table["label"].combine_chunks()
    unknown = pc.invert(pc.is_in(labels, value_set=pa.array(AVA_LABELS)))
    if pc.any(unknown).as_py():
        i = int(np.flatnonzero(unknown.to_numpy(zero_copy_only=False))[0])
        raise DataError(path, f"unknown label {labels[i].as_py()!r}: expected one of {list(AVA_LABELS)}",
                        i + offset, "label")

    entities = table["entity_id"].combine_chunks()
    empty = pc.equal(pc.utf8_length(entities), 0)
    if pc.any(empty).as_py():
        i = int(np.flatnonzero(empty.to_numpy(zero_copy_only=False))[0])
        raise DataError(path, "empty entity_id", i + offset, "entity_id")
    _check_track_order(path, entities.to_pylist(), stamps, offset)

    return pa.table({
        "video_id": table["video_id"].combine_chunks(),
        "split": pa.array([split] * n, pa.string()),
        "frame_timestamp": pa.array(stamps, pa.float64()),
        "x1": pa.array(box["entity_box_x1"], pa.float32()),
        "y1": pa.array(box["entity_box_y1"], pa.float32()),
        "x2": pa.array(box["entity_box_x2"], pa.float32()),
        "y2": pa.array(box["entity_box_y2"], pa.float32()),
        "label": labels,
        "entity_id": entities,
        "identity": pa.nulls(n, pa.string()),
        "ambiguous": pa.array(np.zeros(n, bool)),
        "source_line": pa.array(np.arange(offset, n + offset, dtype=np.int32)),
    }, schema=BOXES)


def _check_track_order(path: Path, entities: list[str], stamps: np.ndarray, offset: int) -> None:
    """Within one face track, timestamps must strictly increase in file order."""
    last: dict[str, float] = {}
    for index, (entity, stamp) in enumerate(zip(entities, stamps)):
        previous = last.get(entity)
        if previous is not None and not stamp > previous:
            raise DataError(path, f"timestamps of track {entity!r} must increase: {stamp} follows {previous}",
                            index + offset, "frame_timestamp")
        last[entity] = stamp


def apes_entity_to_ava(entity_id: str) -> str:
    """APES files write AVA's `:` as the last `_` (`vid_1020_1080_1` -> `vid_1020_1080:1`)."""
    if ":" in entity_id:
        return entity_id
    head, sep, tail = entity_id.rpartition("_")
    return f"{head}:{tail}" if sep else entity_id


def read_apes_csv(path: str | Path) -> dict[str, Identity]:
    """Parse APES-<split>.csv (header, then entity_id, video_id, identity) into entity -> identity."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    out: dict[str, Identity] = {}
    owner: dict[str, str] = {}
    with path.open("r", newline="") as handle:
        rows = csv.reader(handle)
        header = next(rows, None)
        if header is None or [h.strip() for h in header] != ["entity_id", "video_id", "identity"]:
            raise DataError(path, f"expected header entity_id,video_id,identity, found {header}", 1)
        for number, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) != 3:
                raise DataError(path, f"expected 3 columns, found {len(row)}", number)
            entity, video_id, identity = (value.strip() for value in row)
            check_video_id(video_id, path, number)
            if not entity:
                raise DataError(path, "empty entity_id", number, "entity_id")
            if not identity:
                raise DataError(path, "empty identity", number, "identity")
            entity = apes_entity_to_ava(entity)
            if entity in out:
                raise DataError(path, f"entity {entity!r} listed twice (first on line {out[entity].line})",
                                number, "entity_id")
            if identity != AMBIGUOUS:
                if owner.setdefault(identity, video_id) != video_id:
                    raise DataError(path, f"identity {identity!r} spans two videos "
                                          f"({owner[identity]!r} and {video_id!r}); identities are per video",
                                    number, "identity")
            out[entity] = Identity(video_id, identity, number)
    if not out:
        raise DataError(path, "no identity rows")
    return out


def read_manifest(path: str | Path) -> list[tuple[str, str]]:
    """Parse the video list (`file_name,md5` rows; a header row and md5-less rows are accepted)."""
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    entries: list[tuple[str, str]] = []
    with path.open("r", newline="") as handle:
        for number, row in enumerate(csv.reader(handle), start=1):
            if not row or not row[0].strip():
                continue
            if number == 1 and row[0].strip() == "file_name":
                continue
            name = row[0].strip()
            md5 = row[1].strip().lower() if len(row) > 1 else ""
            stem, dot, _ = name.rpartition(".")
            check_video_id(stem if dot else name, path, number)
            if md5 and (len(md5) != 32 or any(c not in "0123456789abcdef" for c in md5)):
                raise DataError(path, f"expected a 32-hex-digit md5, found {md5!r}", number, "md5")
            entries.append((name, md5))
    if not entries:
        raise DataError(path, "empty video list")
    return entries


def list_split_videos(layout: RawLayout, split: str) -> list[tuple[str, Path]]:
    """(video_id, csv path) of every official per-video AVA CSV of a split, sorted by video id."""
    directory = layout.ava_dir(split)
    if not directory.is_dir():
        raise DataError(directory, f"missing annotation directory for split '{split}'")
    found = []
    for path in sorted(directory.glob("*.csv")):
        suffix = "-activespeaker.csv"
        video_id = path.name[: -len(suffix)] if path.name.endswith(suffix) else path.stem
        found.append((video_id, path))
    if not found:
        raise DataError(directory, f"empty split '{split}': no AVA-ActiveSpeaker CSV files")
    return found


def _attach_identities(table: pa.Table, identities: dict[str, Identity], path: Path) -> pa.Table:
    """Fill `identity` and `ambiguous` from the APES rows, checking the video of each track."""
    entities = table["entity_id"].to_pylist()
    videos = table["video_id"].to_pylist()
    lines = table["source_line"].to_pylist()
    identity_col: list[str | None] = []
    ambiguous_col: list[bool] = []
    for entity, video, line in zip(entities, videos, lines):
        ident = identities.get(entity)
        if ident is not None and ident.video_id != video:
            raise DataError(path, f"track {entity!r} is in video {video!r} but APES says {ident.video_id!r}",
                            line, "video_id")
        identity_col.append(None if ident is None or ident.identity == AMBIGUOUS else ident.identity)
        ambiguous_col.append(ident is not None and ident.identity == AMBIGUOUS)
    table = table.set_column(table.schema.get_field_index("identity"), "identity",
                             pa.array(identity_col, pa.string()))
    return table.set_column(table.schema.get_field_index("ambiguous"), "ambiguous",
                            pa.array(ambiguous_col, pa.bool_()))


def iter_split(layout: RawLayout, split: str) -> Iterator[tuple[str, Path, pa.Table]]:
    """Yield (video_id, csv path, boxes) one video at a time, identities attached (memory stays flat).

    Checks first that every APES entity of the split appears in the split's AVA CSVs.
    """
    apes_path = layout.apes_csv(split)
    identities = read_apes_csv(apes_path)
    videos = list_split_videos(layout, split)
    check_apes_entities_present(identities, videos, apes_path)
    for video_id, path in videos:
        table = read_ava_csv(path, split)
        others = set(table["video_id"].unique().to_pylist()) - {video_id}
        if others and path.name.endswith("-activespeaker.csv"):
            raise DataError(path, f"rows of other videos {sorted(others)[:3]} in the file of {video_id!r}",
                            None, "video_id")
        yield video_id, path, _attach_identities(table, identities, path)


def check_apes_entities_present(identities: dict[str, Identity], videos: list[tuple[str, Path]],
                                apes_path: Path) -> None:
    """Every APES entity must name a face track of the AVA CSVs (read only the entity column)."""
    seen: set[str] = set()
    for _, path in videos:
        header = first_line(path).split(",")[0].strip() == "video_id"
        with path.open("r", newline="") as handle:
            rows = csv.reader(handle)
            if header:
                next(rows, None)
            for row in rows:
                if len(row) >= 8:
                    seen.add(row[7].strip())
    for entity, ident in identities.items():
        if entity not in seen:
            raise DataError(apes_path, f"entity {entity!r} is not a face track of any AVA-ActiveSpeaker CSV "
                                       "of this split", ident.line, "entity_id")


def load_split(layout: RawLayout, split: str) -> pa.Table:
    """All boxes of one split as one table (fine for the embedded data; stages stream with iter_split)."""
    tables = [table for _, _, table in iter_split(layout, split)]
    return pa.concat_tables(tables) if tables else BOXES.empty_table()
