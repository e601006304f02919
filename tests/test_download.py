"""`download` against a real HTTP mirror on 127.0.0.1 serving a tiny AVA + APES layout."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import imageio_ffmpeg
import pytest
import yaml
from mirror_server import Faults, Mirror
from typer.testing import CliRunner

from apes_cli.main import app
from stages.core.config import DownloadParams
from stages.core.errors import DataError
from stages.download import choose_videos, run
from stages.rawdata.annotations import iter_split, list_split_videos, read_manifest
from stages.rawdata.http_fetch import DownloadError
from stages.rawdata.layout import SPLITS, RawLayout

LIST = "ava/annotations/ava_speech_file_names_v1.txt"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def mirrored_videos(root: Path) -> dict[str, str]:
    """video id -> file name, from the mirror's video list."""
    return {name.rpartition(".")[0]: name for name, _ in read_manifest(root / LIST)}


def first_train_video(root: Path) -> str:
    """File name of the first train video (the one `--limit 1` picks)."""
    names = mirrored_videos(root)
    with tarfile.open(root / "ava" / "annotations" / "ava_activespeaker_train_v1.0.tar.bz2") as tar:
        ids = sorted(Path(m.name).name.removesuffix("-activespeaker.csv") for m in tar if m.isfile())
    return names[ids[0]]


def csv_tar(members: dict[str, bytes], dirs: tuple[str, ...] = ()) -> bytes:
    """A tar.bz2 holding the given directories and files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def source(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An AVA-style mirror of the synth layout: ava/annotations/*, ava/trainval/<videos>, apes/APES-<split>.csv.

    One train video is remuxed to .mkv so the list mixes extensions, as AVA's does.
    """
    raw = RawLayout(tiny_raw)
    root = tmp_path_factory.mktemp("mirror_source")
    annotations, trainval, apes = root / "ava" / "annotations", root / "ava" / "trainval", root / "apes"
    for folder in (annotations, trainval, apes):
        folder.mkdir(parents=True)
    remuxed = [video_id for video_id, _ in list_split_videos(raw, "train")][-1]
    rows = ["file_name,md5"]
    for name, _ in read_manifest(raw.manifest):
        video_id = name.rpartition(".")[0]
        if video_id == remuxed:
            name = f"{video_id}.mkv"
            subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(raw.video_path(video_id)),
                            "-c", "copy", str(trainval / name)], check=True)
        else:
            shutil.copy(raw.video_path(video_id), trainval / name)
        rows.append(f"{name},{md5((trainval / name).read_bytes())}")
    (root / LIST).write_text("\n".join(rows) + "\n")
    for split in SPLITS:
        folder = raw.ava_dir(split).name
        members = {f"{folder}/{path.name}": path.read_bytes() for _, path in list_split_videos(raw, split)}
        (annotations / f"{folder}.tar.bz2").write_bytes(csv_tar(members, dirs=(folder,)))
        shutil.copy(raw.apes_csv(split), apes / f"APES-{split}.csv")
    return root


@pytest.fixture()
def mirror_root(source: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A per-test copy of the mirror tree (tests may break it); proxies off for loopback."""
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    return Path(shutil.copytree(source, tmp_path / "mirror"))


def settings(mirror: Mirror, root: Path, **overrides: object) -> DownloadParams:
    archives = root / "ava" / "annotations"
    values = dict(base_url=f"{mirror.url}/ava", apes_url=f"{mirror.url}/apes", workers=2, retries=3,
                  timeout_s=5.0, backoff_s=0.01,
                  train_archive_md5=md5((archives / "ava_activespeaker_train_v1.0.tar.bz2").read_bytes()),
                  val_archive_md5=md5((archives / "ava_activespeaker_val_v1.0.tar.bz2").read_bytes()))
    values.update(overrides)
    return DownloadParams(**values)  # type: ignore[arg-type]


def test_full_download_gives_the_synth_layout_back_and_a_rerun_skips(
        tiny_raw: Path, mirror_root: Path, tmp_path: Path) -> None:
    layout = RawLayout(tmp_path / "raw")
    with Mirror(mirror_root) as mirror:
        first = run(settings(mirror, mirror_root), layout.root)
        second = run(settings(mirror, mirror_root), layout.root)
        corrupted = layout.videos_dir / first_train_video(mirror_root)
        corrupted.write_bytes(b"not the video")
        third = run(settings(mirror, mirror_root), layout.root)
    for split in SPLITS:
        expected = [(video_id, table) for video_id, _, table in iter_split(RawLayout(tiny_raw), split)]
        loaded = [(video_id, table) for video_id, _, table in iter_split(layout, split)]
        assert [v for v, _ in loaded] == [v for v, _ in expected]
        assert all(got.equals(want) for (_, got), (_, want) in zip(loaded, expected))
    videos = mirrored_videos(mirror_root)
    assert sorted(Path(name).suffix for name in videos.values()) == [".mkv", ".mp4", ".mp4", ".mp4"]
    for video_id, name in videos.items():
        assert layout.video_path(video_id).read_bytes() == (mirror_root / "ava" / "trainval" / name).read_bytes()
    assert sorted(read_manifest(layout.manifest)) == sorted(read_manifest(mirror_root / LIST))
    assert first["files_fetched"] == 5 + len(videos) and first["files_skipped_present"] == 0
    assert first["videos"] == {"train": 2, "val": 2}
    assert second["files_fetched"] == 0 and second["bytes_downloaded"] == 0
    assert second["files_skipped_present"] == 5 + len(videos)
    assert third["files_fetched"] == 1 and third["files_skipped_present"] == 4 + len(videos)
    assert not list(layout.root.rglob("*.part"))


def test_dropped_connection_resumes_with_range(mirror_root: Path, tmp_path: Path) -> None:
    video = first_train_video(mirror_root)
    path = f"ava/trainval/{video}"
    data = (mirror_root / path).read_bytes()
    layout = RawLayout(tmp_path / "raw")
    with Mirror(mirror_root, Faults(drop_half={path})) as mirror:
        metrics = run(settings(mirror, mirror_root), layout.root)
    gets = mirror.gets(path)
    assert [entry.status for entry in gets] == [200, 206]
    assert gets[1].range == f"bytes={len(data) // 2}-"
    assert md5((layout.videos_dir / video).read_bytes()) == md5(data)
    assert metrics["resumed"] == 1 and metrics["retries"] == 1 and metrics["restarted"] == 0


def test_leftover_part_file_continues_where_it_stopped(mirror_root: Path, tmp_path: Path) -> None:
    video = first_train_video(mirror_root)
    data = (mirror_root / "ava" / "trainval" / video).read_bytes()
    layout = RawLayout(tmp_path / "raw")
    layout.videos_dir.mkdir(parents=True)
    (layout.videos_dir / f"{video}.part").write_bytes(data[:1000])
    with Mirror(mirror_root) as mirror:
        metrics = run(settings(mirror, mirror_root), layout.root)
    assert mirror.gets(f"ava/trainval/{video}")[0].range == "bytes=1000-"
    assert (layout.videos_dir / video).read_bytes() == data
    assert metrics["resumed"] == 1


def test_server_ignoring_range_restarts_cleanly(mirror_root: Path, tmp_path: Path) -> None:
    video = first_train_video(mirror_root)
    path = f"ava/trainval/{video}"
    layout = RawLayout(tmp_path / "raw")
    with Mirror(mirror_root, Faults(drop_half={path}, ignore_range=True)) as mirror:
        metrics = run(settings(mirror, mirror_root), layout.root)
    assert [entry.status for entry in mirror.gets(path)] == [200, 200]
    assert (layout.videos_dir / video).read_bytes() == (mirror_root / path).read_bytes()
    assert metrics["restarted"] == 1 and metrics["resumed"] == 0


def test_server_errors_are_retried_then_given_up(mirror_root: Path, tmp_path: Path) -> None:
    path = "apes/APES-val.csv"
    with Mirror(mirror_root, Faults(statuses={path: [503, 500]})) as mirror:
        metrics = run(settings(mirror, mirror_root), tmp_path / "ok")
    assert metrics["retries"] == 2
    with Mirror(mirror_root, Faults(statuses={path: [503, 503, 503]})) as mirror:
        with pytest.raises(DownloadError, match=r"APES-val\.csv: gave up after 2 retries: HTTP 503"):
            run(settings(mirror, mirror_root, retries=2), tmp_path / "bad")
    assert len(mirror.gets(path)) == 3


def test_wrong_md5_is_rejected_and_no_file_is_left(mirror_root: Path, tmp_path: Path) -> None:
    manifest = mirror_root / LIST
    video = first_train_video(mirror_root)
    actual = md5((mirror_root / "ava" / "trainval" / video).read_bytes())
    manifest.write_text(manifest.read_text().replace(actual, "0" * 32))
    layout = RawLayout(tmp_path / "raw")
    layout.videos_dir.mkdir(parents=True)
    (layout.videos_dir / video).write_bytes(b"a stale copy that does not match either")
    with Mirror(mirror_root) as mirror:
        with pytest.raises(DownloadError) as caught:
            run(settings(mirror, mirror_root), layout.root)
    message = str(caught.value)
    assert video in message and "0" * 32 in message and actual in message
    assert not (layout.videos_dir / video).exists()
    assert not (layout.videos_dir / f"{video}.part").exists()
    assert not layout.ava_dir("train").exists() and not layout.manifest.exists()


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "hardlink", "device"])
def test_unsafe_archive_member_is_refused_and_nothing_lands_outside(
        mirror_root: Path, tmp_path: Path, kind: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    good = b"okvid,0.5,0.1,0.1,0.3,0.3,NOT_SPEAKING,okvid_0_1:1\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:bz2") as tar:
        info = tarfile.TarInfo("ava_activespeaker_train_v1.0/okvid-activespeaker.csv")
        info.size = len(good)
        tar.addfile(info, io.BytesIO(good))
        bad_name = {"dotdot": "ava_activespeaker_train_v1.0/../../../outside/evil-activespeaker.csv",
                    "absolute": str(outside / "abs-activespeaker.csv"),
                    "symlink": "ava_activespeaker_train_v1.0/link-activespeaker.csv",
                    "hardlink": "ava_activespeaker_train_v1.0/hard-activespeaker.csv",
                    "device": "ava_activespeaker_train_v1.0/dev-activespeaker.csv"}[kind]
        info = tarfile.TarInfo(bad_name)
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, str(outside / "target")
            tar.addfile(info)
        elif kind == "hardlink":
            info.type, info.linkname = tarfile.LNKTYPE, "ava_activespeaker_train_v1.0/okvid-activespeaker.csv"
            tar.addfile(info)
        elif kind == "device":
            info.type = tarfile.CHRTYPE
            tar.addfile(info)
        else:
            payload = b"evil"
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    archive = mirror_root / "ava" / "annotations" / "ava_activespeaker_train_v1.0.tar.bz2"
    archive.write_bytes(buffer.getvalue())
    layout = RawLayout(tmp_path / "raw")
    with Mirror(mirror_root) as mirror:
        with pytest.raises(DataError, match="refused archive member") as caught:
            run(settings(mirror, mirror_root), layout.root)
    assert repr(bad_name) in str(caught.value)
    assert list(outside.iterdir()) == []
    assert list(tmp_path.rglob("*activespeaker.csv")) == []


def write_params(path: Path, mirror: Mirror, root: Path, raw_dir: Path) -> Path:
    """A params.yaml whose download section fits the mirror (its archive md5s, short timeouts)."""
    download_section = {key: value for key, value in vars(settings(mirror, root)).items()
                        if key in ("retries", "timeout_s", "backoff_s", "train_archive_md5", "val_archive_md5")}
    path.write_text(yaml.safe_dump({"data": {"raw_dir": str(raw_dir)}, "download": download_section}))
    return path


def test_missing_file_gives_a_clear_error_naming_the_url(mirror_root: Path, tmp_path: Path) -> None:
    with Mirror(mirror_root) as mirror:
        params = write_params(tmp_path / "params.yaml", mirror, mirror_root, tmp_path / "raw")
        result = CliRunner().invoke(app, ["download", "--params", str(params), "--base-url", f"{mirror.url}/ava",
                                          "--apes-url", f"{mirror.url}/nowhere", "--metrics",
                                          str(tmp_path / "m.json")])
    assert result.exit_code == 2
    assert re.search(rf"{re.escape(mirror.url)}/nowhere/APES-(train|val)\.csv: HTTP 404", result.output)


def test_cli_limit_one_fetches_one_video(mirror_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    with Mirror(mirror_root) as mirror:
        params = write_params(tmp_path / "params.yaml", mirror, mirror_root, tmp_path / "unused")
        result = CliRunner().invoke(app, ["download", "--params", str(params), "--out", str(out),
                                          "--base-url", f"{mirror.url}/ava", "--apes-url", f"{mirror.url}/apes",
                                          "--limit", "1", "--workers", "1", "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    video_gets = [entry for entry in mirror.log if entry.method == "GET" and entry.path.startswith("ava/trainval/")]
    assert len(video_gets) == 1
    layout = RawLayout(out)
    video = first_train_video(mirror_root)
    video_id = video.rpartition(".")[0]
    assert [path.name for path in layout.videos_dir.iterdir()] == [video]
    assert read_manifest(layout.manifest) == [(video, md5((mirror_root / "ava" / "trainval" / video).read_bytes()))]
    assert [v for v, _, _ in iter_split(layout, "train")] == [video_id]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["videos"] == {"train": 1, "val": 0}
    assert metrics["videos_skipped"] == {"not_in_video_list": 0, "over_limit": 3}
    for split in SPLITS:
        with (mirror_root / "apes" / f"APES-{split}.csv").open(newline="") as handle:
            others = sum(1 for row in list(csv.reader(handle))[1:] if row and row[1] != video_id)
        assert metrics["apes_rows_dropped_other_videos"][split] == others > 0


def test_limit_takes_train_and_val_alternately_and_skips_unlisted_videos() -> None:
    annotated = {"train": ["t2", "t1", "t3"], "val": ["v1", "v2"]}
    listed = {name: (f"{name}.mp4", "") for name in ("t1", "t2", "t3", "v2")}
    chosen, missing, over_limit = choose_videos(annotated, listed, 3, Path("list.txt"))
    assert chosen == {"train": ["t1", "t2"], "val": ["v2"]}
    assert missing == ["v1"] and over_limit == 1
    chosen, _, over_limit = choose_videos(annotated, listed, 0, Path("list.txt"))
    assert chosen == {"train": ["t1", "t2", "t3"], "val": ["v2"]} and over_limit == 0
    with pytest.raises(DataError, match="list.txt: none of the annotated videos"):
        choose_videos(annotated, {}, 0, Path("list.txt"))
