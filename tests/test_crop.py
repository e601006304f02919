"""Stage crop: crops equal the rendered pixels of known boxes in the right frame, row counts equal labelled
non-ambiguous boxes minus documented skips, resumability, and a truncated video failing cleanly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from media_data import (
    FPS,
    Track,
    Video,
    cli,
    iter_shards,
    leftovers,
    patch_red,
    planes_of,
    read_shards,
    render_frame,
    standard_videos,
    write_params,
    write_raw,
)

from stages.core.errors import DataError
from stages.crop import cut
from stages.media.crop_codec import decode_crops
from stages.media.face_crop import crop_rgb, square_boxes
from stages.media.shards import metadata
from stages.media.video_io import frame_indices
from stages.rawdata.annotations import load_split
from stages.rawdata.layout import RawLayout

PARAMS = "crop: {size: 64, margin: 0.1}\n"


def run_stages(raw: Path, work: Path, *stages: str, extra: tuple[str, ...] = ()):
    """Run decode/crop through the CLI into `work`; returns the last Result."""
    params = write_params(work / "params.yaml", PARAMS)
    result = None
    for stage in stages:
        args = {"decode": ["--raw", raw, "--out", work / "decoded"],
                "crop": ["--raw", raw, "--decoded", work / "decoded", "--out", work / "crops"]}[stage]
        result = cli(stage, "--params", params, *args, "--metrics", work / f"{stage}.json", *extra)
        if result.exit_code != 0:
            return result
    return result


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """decode + crop of the standard generated layout."""
    work = tmp_path_factory.mktemp("crop")
    write_raw(work / "raw", standard_videos())
    result = run_stages(work / "raw", work, "decode", "crop")
    assert result.exit_code == 0, result.output
    return work


def test_square_boxes_centre_an_even_margin_square_on_the_box() -> None:
    boxes = np.array([(0.25, 0.25, 0.5, 0.75), (0.25, 0.25, 0.5, 0.75), (0.4, 0.2, 0.4, 0.6), (0.4, 0.2, 0.402, 0.6)])
    squares, has_area = square_boxes(boxes[:1], 200, 100, 0.0)
    assert squares.tolist() == [[50, 24, 50]] and has_area.tolist() == [True]  # top 25 -> even 24
    squares, has_area = square_boxes(boxes, 200, 100, 0.5)
    assert squares[1].tolist() == [24, 0, 100]  # centre (75, 50), side 2 x 50
    assert has_area.tolist() == [True, True, False, False]  # zero width; under one pixel


def test_cut_returns_rgb_and_pads_outside_the_frame_with_black() -> None:
    rgb = np.zeros((12, 12, 3), np.uint8)
    rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2] = 200, 120, 40
    crop = cut(planes_of(rgb), 6, -2, 8, 8)
    assert crop.shape == (8, 8, 3)
    assert np.abs(crop[3:, :5].astype(int) - (200, 120, 40)).max() <= 3
    assert crop[:2].max() <= 3 and crop[:, 6:].max() <= 3
    halved = cut(planes_of(rgb), 0, 0, 12, 6)  # downscale path
    assert np.abs(halved.astype(int) - (200, 120, 40)).max() <= 3


def test_crop_rows_equal_labelled_boxes_minus_skips(work: Path) -> None:
    videos = {v.video_id: v for v in standard_videos()}
    labelled = {split: 0 for split in ("train", "val")}
    for video in videos.values():
        labelled[video.split] += sum(len(t.stamps()) for t in video.tracks
                                     if t.identity not in (None, "EXTRA_OR_AMBIGUOUS"))
    labelled["train"] += 1  # the zero-area row belongs to a labelled track
    metrics = json.loads((work / "crop.json").read_text())
    assert metrics["skips"] == {"ambiguous": 41, "no_identity": 21, "zero_area": 1}
    example = metrics["skip_examples"][0]
    assert example["reason"] == "zero_area" and example["file"].endswith("vidA-activespeaker.csv")
    assert example["line"] == len(videos["vidA"].extra_rows) + sum(len(t.stamps()) for t in videos["vidA"].tracks)
    for split in ("train", "val"):
        images, keys = read_shards(work / "crops", split, "image")
        assert len(images) == keys.num_rows == labelled[split] - (split == "train")
        assert None not in keys["identity"].to_pylist()
    assert metrics["crops"] == sum(labelled.values()) - 1


def test_crops_match_the_rendered_box_of_the_nearest_frame(work: Path) -> None:
    videos = {v.video_id: v for v in standard_videos()}
    for split in ("train", "val"):
        for images, keys in iter_shards(work / "crops", split, "image"):
            rows = keys.to_pylist()
            video = videos[rows[0]["video_id"]]
            frames = frame_indices(np.array([r["frame_timestamp"] for r in rows]), FPS)
            for image, row, index in zip(images, rows, frames):
                track = next(t for t in video.tracks if video.entity(t) == row["entity_id"])
                # Independent check: the middle of the crop is the patch, coloured for this very frame.
                centre = np.median(image[24:40, 24:40].reshape(-1, 3), axis=0)
                assert np.abs(centre - (patch_red(index), track.green, 255 - track.green)).max() <= 6, row
                # The whole crop equals the same cut of the frame as rendered (before H.264).
                (left, top, side), = square_boxes(np.array([[row[c] for c in ("x1", "y1", "x2", "y2")]]), 320, 180,
                                                  0.1)[0]
                expected = cut(planes_of(render_frame(int(index), video.tracks)), left, top, side, 64)
                assert np.abs(image.astype(int) - expected).mean() < 4, row


@pytest.mark.parametrize("box", [(0.40, 0.30, 0.55, 0.70), (-0.05, 0.80, 0.12, 1.10), (0.9, -0.2, 1.0, 0.1)])
def test_search_crops_a_frame_as_the_crop_stage_does(box: tuple[float, ...]) -> None:
    """`search --model` (an RGB frame, a pixel box) and the crop stage (YUV planes) cut the same pixels: same
    square, same black outside the frame, same resize; only the stage's 4:2:0 colour rounding differs."""
    rng = np.random.default_rng(3)
    rgb = cv2.resize(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8), (320, 180), interpolation=cv2.INTER_NEAREST)
    squares, _ = square_boxes(np.array([box]), 320, 180, 0.1)
    left, top, side = (int(v) for v in squares[0])
    stage = cut(planes_of(rgb), left, top, side, 32).astype(int)
    search = crop_rgb(rgb, np.array(box) * [320, 180, 320, 180], 32, 0.1).astype(int)
    assert search.shape == stage.shape == (32, 32, 3)
    difference = np.abs(search - stage)  # colour blocks of 40 x 30 px: 4:2:0 chroma blurs only their edges
    assert np.median(difference) <= 2 and difference.mean() < 8, (np.median(difference), difference.mean())
    outside = search.sum(axis=2) == 0
    assert outside.any() == (left < 0 or top < 0 or left + side > 320 or top + side > 180)
    if outside.any():
        assert np.median(stage[outside]) <= 3  # black where the stage fills black


def test_box_at_the_frame_corner_is_padded_black(work: Path) -> None:
    images, keys = read_shards(work / "crops", "train", "image")
    corner = np.flatnonzero(np.array(keys["entity_id"].to_pylist()) == "vidA_0000_0030:5")
    assert corner.size == 21
    # box x 280..320, y 130..180 -> square of side 60 from x 270, y 126: 10 px right and 6 px below are outside.
    image = images[corner[0]]
    assert image[:, -9:].max() <= 8 and image[-3:].max() <= 8
    assert image[10:50, 20:45, 1].min() > 140


def test_schema_metadata_gives_the_crop_shape(work: Path) -> None:
    meta = metadata(pq.read_schema(work / "crops" / "train" / "vidA.parquet"))
    assert (meta["crop_size"], meta["image_format"]) == ("64", "raw_rgb_uint8")


def test_rerun_resumes_and_equals_an_uninterrupted_run(work: Path, tmp_path: Path) -> None:
    shutil.copytree(work / "decoded", tmp_path / "decoded")
    shutil.copytree(work / "crops", tmp_path / "crops")
    (tmp_path / "crops" / "val" / "vidB.parquet").unlink()
    (tmp_path / "crops" / "train" / ".vidA.parquet.x.tmp").write_bytes(b"PAR1 partial")
    result = run_stages(work / "raw", tmp_path, "crop")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "crop.json").read_text())
    first = json.loads((work / "crop.json").read_text())
    assert metrics["resumed"] == 1
    for key in ("crops", "boxes", "skips", "skip_examples"):
        assert metrics[key] == first[key]
    assert leftovers(tmp_path) == []
    for path in sorted((work / "crops").rglob("*.parquet")):
        assert path.read_bytes() == (tmp_path / "crops" / path.relative_to(work / "crops")).read_bytes()


def test_truncated_video_fails_naming_it_and_leaves_no_shard(tmp_path: Path) -> None:
    track = Track(1, (0.2, 0.2, 0.4, 0.5), 0.5, 3.5, "v_p1")
    raw = write_raw(tmp_path / "raw", [Video("v", "train", 4.0, [track], faststart=True)])
    assert run_stages(raw, tmp_path, "decode", extra=("--split", "train")).exit_code == 0
    video = raw / "videos" / "v.mp4"
    video.write_bytes(video.read_bytes()[: video.stat().st_size // 3])  # index intact, frames cut off
    result = run_stages(raw, tmp_path, "crop", extra=("--split", "train"))
    assert result.exit_code == 2, result.output
    assert "v.mp4" in result.output and "video ended before frame" in result.output
    assert not (tmp_path / "crops" / "train" / "v.parquet").exists()
    assert leftovers(tmp_path) == []


def test_tiny_synthetic_data_set_crops_every_labelled_box(tiny_raw: Path, tmp_path: Path) -> None:
    result = run_stages(tiny_raw, tmp_path, "decode", "crop")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "crop.json").read_text())
    for split in ("train", "val"):
        boxes = load_split(RawLayout(tiny_raw), split)
        x1, y1, x2, y2 = (boxes[c].to_numpy() for c in ("x1", "y1", "x2", "y2"))
        labelled = np.array([i is not None for i in boxes["identity"].to_pylist()])
        degenerate = ((x2 - x1) * 256 < 1) | ((y2 - y1) * 144 < 1)
        images, keys = read_shards(tmp_path / "crops", split, "image")
        assert len(images) == int((labelled & ~degenerate).sum()) > 0
        assert images.shape[1:] == (64, 64, 3)
    assert metrics["skips"]["ambiguous"] > 0


def test_jpeg_crops_decode_close_to_raw_and_say_their_format(work: Path, tmp_path: Path) -> None:
    shutil.copytree(work / "decoded", tmp_path / "decoded")
    params = write_params(tmp_path / "params.yaml", "crop: {size: 64, margin: 0.1, format: jpeg, quality: 90}\n")
    result = cli("crop", "--params", params, "--raw", work / "raw", "--decoded", tmp_path / "decoded",
                 "--out", tmp_path / "crops", "--metrics", tmp_path / "crop.json")
    assert result.exit_code == 0, result.output
    for split in ("train", "val"):
        for raw_path in sorted((work / "crops" / split).glob("*.parquet")):
            path = tmp_path / "crops" / split / raw_path.name
            meta = metadata(pq.read_schema(path))
            assert (meta["image_format"], meta["jpeg_quality"]) == ("jpeg", "90")
            raw, jpeg = pq.read_table(raw_path), pq.read_table(path)
            assert jpeg.drop_columns(["image"]).equals(raw.drop_columns(["image"]))
            exact = decode_crops(raw["image"], metadata(raw.schema), raw_path)
            decoded = decode_crops(jpeg["image"], meta, path, device="cpu")
            assert decoded.shape == exact.shape and decoded.dtype == np.uint8
            assert np.abs(decoded.astype(int) - exact).mean() < 4


def test_undecodable_jpeg_names_the_shard() -> None:
    column = pa.array([b"\xff\xd8 not a jpeg"], pa.binary())
    with pytest.raises(DataError, match=r"s\.parquet.*undecodable JPEG crop"):
        decode_crops(column, {"crop_size": "64", "image_format": "jpeg"}, "s.parquet", device="cpu")
    with pytest.raises(DataError, match="unknown image_format 'png'"):
        decode_crops(column, {"crop_size": "64", "image_format": "png"}, "s.parquet")
