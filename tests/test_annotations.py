"""The raw-annotation loader accepts the real formats' quirks and names file, line and field on bad rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from stages.core.errors import DataError
from stages.rawdata.annotations import (
    apes_entity_to_ava,
    iter_split,
    load_split,
    read_apes_csv,
    read_ava_csv,
    read_manifest,
)
from stages.rawdata.layout import RawLayout

GOOD_ROWS = [
    "vidA,900.00,0.1,0.2,0.3,0.4,NOT_SPEAKING,vidA_900_960:1",
    "vidA,900.05,0.1,0.2,0.3,0.4,SPEAKING_AUDIBLE,vidA_900_960:1",
    "vidA,900.00,0.5,0.5,0.7,0.9,SPEAKING_NOT_AUDIBLE,vidA_900_960:2",
    "vidA,900.05,0.5,0.5,0.7,0.9,NOT_SPEAKING,vidA_900_960:2",
]


def make_layout(root: Path, ava_rows: list[str], apes_rows: list[str]) -> RawLayout:
    layout = RawLayout(root)
    layout.ava_dir("train").mkdir(parents=True)
    layout.ava_csv("train", "vidA").write_text("\n".join(ava_rows) + "\n")
    layout.apes_csv("train").write_text("entity_id,video_id,identity\n" + "\n".join(apes_rows) + "\n")
    return layout


def test_real_format_parses_with_identities(tmp_path: Path) -> None:
    layout = make_layout(tmp_path, GOOD_ROWS, ["vidA_900_960_1,vidA,alice", "vidA_900_960_2,vidA,EXTRA_OR_AMBIGUOUS"])
    table = load_split(layout, "train")
    assert table.num_rows == 4
    rows = table.to_pylist()
    assert rows[0]["identity"] == "alice" and not rows[0]["ambiguous"]
    assert rows[2]["identity"] is None and rows[2]["ambiguous"]
    assert rows[1]["frame_timestamp"] == pytest.approx(900.05)
    assert rows[3]["source_line"] == 4


def test_augmented_variant_with_header(tmp_path: Path) -> None:
    path = tmp_path / "aug.csv"
    header = "video_id,frame_timestamp,entity_box_x1,entity_box_y1,entity_box_x2,entity_box_y2,label,entity_id,label_id,instance_id"
    path.write_text(header + "\n" + "\n".join(f"{r},0,x" for r in GOOD_ROWS) + "\n")
    table = read_ava_csv(path, "train")
    assert table.num_rows == 4
    assert table["label"].to_pylist()[1] == "SPEAKING_AUDIBLE"


def test_apes_underscore_maps_to_colon() -> None:
    assert apes_entity_to_ava("0f39OWEqJ24_1020_1080_1") == "0f39OWEqJ24_1020_1080:1"
    assert apes_entity_to_ava("0f39OWEqJ24_1020_1080:1") == "0f39OWEqJ24_1020_1080:1"


@pytest.mark.parametrize(
    ("bad_row", "field", "words"),
    [
        ("vidA,900.10,0.1,0.2,0.3,0.4,NOT_SPEAKING", None, "columns"),
        ("vidA,900.10,0.1,abc,0.3,0.4,NOT_SPEAKING,vidA_900_960:1", "entity_box_y1", "number"),
        ("vidA,900.10,0.1,nan,0.3,0.4,NOT_SPEAKING,vidA_900_960:1", "entity_box_y1", "[0, 1]"),
        ("vidA,900.10,0.3,0.2,0.1,0.4,NOT_SPEAKING,vidA_900_960:1", "entity_box_x2", ">="),
        ("vidA,900.10,0.1,0.2,1.3,0.4,NOT_SPEAKING,vidA_900_960:1", "entity_box_x2", "[0, 1]"),
        ("vidA,900.10,0.1,0.2,0.3,0.4,WHISPERING,vidA_900_960:1", "label", "unknown label"),
        ("vidA,-1.0,0.1,0.2,0.3,0.4,NOT_SPEAKING,vidA_900_960:3", "frame_timestamp", ">= 0"),
        ("vidA,900.01,0.1,0.2,0.3,0.4,NOT_SPEAKING,vidA_900_960:1", "frame_timestamp", "increase"),
        ("../x,900.10,0.1,0.2,0.3,0.4,NOT_SPEAKING,vidA_900_960:1", "video_id", "unsafe"),
    ],
)
def test_bad_ava_row_names_file_line_field(tmp_path: Path, bad_row: str, field: str | None, words: str) -> None:
    path = tmp_path / "vidA-activespeaker.csv"
    rows = GOOD_ROWS[:2] + [bad_row] + GOOD_ROWS[2:]
    path.write_text("\n".join(rows) + "\n")
    with pytest.raises(DataError) as caught:
        read_ava_csv(path, "train")
    error = caught.value
    assert error.file == str(path)
    assert error.line == 3
    assert error.field == field
    assert words in str(error)


def test_apes_entity_missing_from_ava_is_an_error(tmp_path: Path) -> None:
    layout = make_layout(tmp_path, GOOD_ROWS, ["vidA_900_960_1,vidA,alice", "vidA_900_960_9,vidA,bob"])
    with pytest.raises(DataError) as caught:
        list(iter_split(layout, "train"))
    assert caught.value.line == 3 and caught.value.field == "entity_id"
    assert "APES-train.csv" in caught.value.file


def test_identity_spanning_two_videos_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "APES-val.csv"
    path.write_text("entity_id,video_id,identity\nv1_0_1_1,v1,carol\nv2_0_1_1,v2,carol\n")
    with pytest.raises(DataError, match="spans two videos") as caught:
        read_apes_csv(path)
    assert caught.value.line == 3


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    layout = RawLayout(tmp_path)
    layout.ava_dir("val").mkdir(parents=True)
    layout.apes_csv("val").write_text("entity_id,video_id,identity\nv1_0_1_1,v1,carol\n")
    with pytest.raises(DataError, match="empty split"):
        list(iter_split(layout, "val"))


def test_manifest_checks_md5_and_names(tmp_path: Path) -> None:
    path = tmp_path / "list.txt"
    path.write_text("file_name,md5\nabc.mp4,0e6ebaacfb3a554199e319e0c26a1ec0\nxyz.mkv\n")
    assert read_manifest(path) == [("abc.mp4", "0e6ebaacfb3a554199e319e0c26a1ec0"), ("xyz.mkv", "")]
    path.write_text("abc.mp4,not-an-md5\n")
    with pytest.raises(DataError) as caught:
        read_manifest(path)
    assert caught.value.field == "md5" and caught.value.line == 1
