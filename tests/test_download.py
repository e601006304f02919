"""`download` against a real HTTP mirror on 127.0.0.1 serving a tiny AVA + APES layout."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

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

ROOT = Path(__file__).resolve().parents[1]
DEFAULTS = DownloadParams()
AVA = urlsplit(DEFAULTS.base_url).path.strip("/")     # ava-dataset: the real hosts' paths, served on loopback
APES = urlsplit(DEFAULTS.apes_url).path.strip("/")    # l0kNCNuXuEq70c3iUHsXxJ7/APES
LIST = f"{AVA}/annotations/{DEFAULTS.file_list}"


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def mirrored_videos(root: Path) -> dict[str, str]:
    """video id -> file name, from the mirror's video list."""
    return {name.rpartition(".")[0]: name for name, _ in read_manifest(root / LIST)}


def first_train_video(root: Path) -> str:
    """File name of the first train video (the one `--limit 1` picks)."""
    names = mirrored_videos(root)
    with tarfile.open(root / AVA / "annotations" / "ava_activespeaker_train_v1.0.tar.bz2") as tar:
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


def transcode(source: Path, dest: Path) -> None:
    """The same video in another container: .mkv copies the streams, .webm re-encodes to VP8 + Opus as AVA's are."""
    codecs = ["-c:v", "libvpx", "-deadline", "realtime", "-cpu-used", "8", "-c:a", "libopus"] \
        if dest.suffix == ".webm" else ["-c", "copy"]
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(source), *codecs, str(dest)],
                   check=True)


@pytest.fixture(scope="module")
def source(tiny_raw: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A mirror of the synth layout at the real hosts' paths: ava-dataset/annotations/* (the bare video list and
    the archives), ava-dataset/trainval/<file name>, l0kNCNuXuEq70c3iUHsXxJ7/APES/APES-<split>.csv.

    The last train video is remuxed to .mkv and the last val video re-encoded to .webm: AVA's list mixes them.
    """
    raw = RawLayout(tiny_raw)
    root = tmp_path_factory.mktemp("mirror_source")
    annotations, trainval, apes = root / AVA / "annotations", root / AVA / "trainval", root / APES
    for folder in (annotations, trainval, apes):
        folder.mkdir(parents=True)
    renamed = {list_split_videos(raw, "train")[-1][0]: ".mkv", list_split_videos(raw, "val")[-1][0]: ".webm"}
    names = []
    for name, _ in read_manifest(raw.manifest):
        video_id = name.rpartition(".")[0]
        if video_id in renamed:
            name = video_id + renamed[video_id]
            transcode(raw.video_path(video_id), trainval / name)
        else:
            shutil.copy(raw.video_path(video_id), trainval / name)
        names.append(name)
    (root / LIST).write_text("\n".join(names) + "\n")
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


def on_loopback(url: str, mirror: Mirror) -> str:
    """The same URL with the mirror's scheme and host: the path stays the real host's."""
    return urlunsplit(urlsplit(url)._replace(scheme="http", netloc=urlsplit(mirror.url).netloc))


def settings(mirror: Mirror, root: Path, **overrides: object) -> DownloadParams:
    archives = root / AVA / "annotations"
    values = dict(base_url=on_loopback(DEFAULTS.base_url, mirror), apes_url=on_loopback(DEFAULTS.apes_url, mirror),
                  workers=2, retries=3, timeout_s=5.0, backoff_s=0.01,
                  train_archive_md5=md5((archives / "ava_activespeaker_train_v1.0.tar.bz2").read_bytes()),
                  val_archive_md5=md5((archives / "ava_activespeaker_val_v1.0.tar.bz2").read_bytes()))
    values.update(overrides)
    return dataclasses.replace(DEFAULTS, **values)  # type: ignore[arg-type]


def test_full_download_gives_the_synth_layout_back_and_a_rerun_skips(
        tiny_raw: Path, mirror_root: Path, tmp_path: Path) -> None:
    layout = RawLayout(tmp_path / "raw")
    with Mirror(mirror_root) as mirror:
        first = run(settings(mirror, mirror_root), layout.root)
        second = run(settings(mirror, mirror_root), layout.root)
        (layout.videos_dir / first_train_video(mirror_root)).unlink()
        third = run(settings(mirror, mirror_root), layout.root)
    for split in SPLITS:
        expected = [(video_id, table) for video_id, _, table in iter_split(RawLayout(tiny_raw), split)]
        loaded = [(video_id, table) for video_id, _, table in iter_split(layout, split)]
        assert [v for v, _ in loaded] == [v for v, _ in expected]
        assert all(got.equals(want) for (_, got), (_, want) in zip(loaded, expected))
    videos = mirrored_videos(mirror_root)
    assert sorted(Path(name).suffix for name in videos.values()) == [".mkv", ".mp4", ".mp4", ".webm"]
    for video_id, name in videos.items():
        assert layout.video_path(video_id).read_bytes() == (mirror_root / AVA / "trainval" / name).read_bytes()
    assert sorted(read_manifest(layout.manifest)) == sorted(read_manifest(mirror_root / LIST))
    assert first["files_fetched"] == 5 + len(videos) and first["files_skipped_present"] == 0
    assert first["videos"] == {"train": 2, "val": 2} and first["videos_without_md5"] == len(videos)
    assert second["files_fetched"] == 0 and second["bytes_downloaded"] == 0
    assert second["files_skipped_present"] == 5 + len(videos)
    assert third["files_fetched"] == 1 and third["files_skipped_present"] == 4 + len(videos)
    assert not list(layout.root.rglob("*.part"))


def test_dropped_connection_resumes_with_range(mirror_root: Path, tmp_path: Path) -> None:
    video = first_train_video(mirror_root)
    path = f"{AVA}/trainval/{video}"
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
    data = (mirror_root / AVA / "trainval" / video).read_bytes()
    layout = RawLayout(tmp_path / "raw")
    layout.videos_dir.mkdir(parents=True)
    (layout.videos_dir / f"{video}.part").write_bytes(data[:1000])
    with Mirror(mirror_root) as mirror:
        metrics = run(settings(mirror, mirror_root), layout.root)
    assert mirror.gets(f"{AVA}/trainval/{video}")[0].range == "bytes=1000-"
    assert (layout.videos_dir / video).read_bytes() == data
    assert metrics["resumed"] == 1


def test_server_ignoring_range_restarts_cleanly(mirror_root: Path, tmp_path: Path) -> None:
    video = first_train_video(mirror_root)
    path = f"{AVA}/trainval/{video}"
    layout = RawLayout(tmp_path / "raw")
    with Mirror(mirror_root, Faults(drop_half={path}, ignore_range=True)) as mirror:
        metrics = run(settings(mirror, mirror_root), layout.root)
    assert [entry.status for entry in mirror.gets(path)] == [200, 200]
    assert (layout.videos_dir / video).read_bytes() == (mirror_root / path).read_bytes()
    assert metrics["restarted"] == 1 and metrics["resumed"] == 0


def test_server_errors_are_retried_then_given_up(mirror_root: Path, tmp_path: Path) -> None:
    path = f"{APES}/APES-val.csv"
    with Mirror(mirror_root, Faults(statuses={path: [503, 500]})) as mirror:
        metrics = run(settings(mirror, mirror_root), tmp_path / "ok")
    assert metrics["retries"] == 2
    with Mirror(mirror_root, Faults(statuses={path: [503, 503, 503]})) as mirror:
        with pytest.raises(DownloadError, match=r"APES-val\.csv: gave up after 2 retries: HTTP 503"):
            run(settings(mirror, mirror_root, retries=2), tmp_path / "bad")
    assert len(mirror.gets(path)) == 3


def test_wrong_md5_is_rejected_and_no_file_is_left(mirror_root: Path, tmp_path: Path) -> None:
    """A list with an md5 column (the reader accepts `file_name,md5` rows) verifies each video against it."""
    video = first_train_video(mirror_root)
    actual = md5((mirror_root / AVA / "trainval" / video).read_bytes())
    (mirror_root / LIST).write_text("".join(f"{name},{md5((mirror_root / AVA / 'trainval' / name).read_bytes())}\n"
                                            if name != video else f"{name},{'0' * 32}\n"
                                            for _, name in sorted(mirrored_videos(mirror_root).items())))
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
    archive = mirror_root / AVA / "annotations" / "ava_activespeaker_train_v1.0.tar.bz2"
    archive.write_bytes(buffer.getvalue())
    layout = RawLayout(tmp_path / "raw")
    with Mirror(mirror_root) as mirror:
        with pytest.raises(DataError, match="refused archive member") as caught:
            run(settings(mirror, mirror_root), layout.root)
    assert repr(bad_name) in str(caught.value)
    assert list(outside.iterdir()) == []
    assert list(tmp_path.rglob("*activespeaker.csv")) == []


def write_params(path: Path, mirror: Mirror, root: Path) -> Path:
    """A params.yaml whose download section fits the mirror (its archive md5s, short timeouts)."""
    download_section = {key: value for key, value in vars(settings(mirror, root)).items()
                        if key in ("retries", "timeout_s", "backoff_s", "train_archive_md5", "val_archive_md5")}
    path.write_text(yaml.safe_dump({"download": download_section}))
    return path


def test_missing_file_gives_a_clear_error_naming_the_url(mirror_root: Path, tmp_path: Path) -> None:
    with Mirror(mirror_root) as mirror:
        params = write_params(tmp_path / "params.yaml", mirror, mirror_root)
        result = CliRunner().invoke(app, ["download", "--params", str(params), "--out", str(tmp_path / "raw"),
                                          "--base-url", on_loopback(DEFAULTS.base_url, mirror),
                                          "--apes-url", f"{mirror.url}/nowhere", "--metrics",
                                          str(tmp_path / "m.json")])
    assert result.exit_code == 2
    assert re.search(rf"{re.escape(mirror.url)}/nowhere/APES-(train|val)\.csv: HTTP 404", result.output)


def test_cli_limit_one_fetches_one_video(mirror_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "raw"
    with Mirror(mirror_root) as mirror:
        params = write_params(tmp_path / "params.yaml", mirror, mirror_root)
        result = CliRunner().invoke(app, ["download", "--params", str(params), "--out", str(out),
                                          "--base-url", on_loopback(DEFAULTS.base_url, mirror),
                                          "--apes-url", on_loopback(DEFAULTS.apes_url, mirror),
                                          "--limit", "1", "--workers", "1", "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    video_gets = [entry for entry in mirror.log if entry.method == "GET" and entry.path.startswith(f"{AVA}/trainval/")]
    assert len(video_gets) == 1
    layout = RawLayout(out)
    video = first_train_video(mirror_root)
    video_id = video.rpartition(".")[0]
    assert [path.name for path in layout.videos_dir.iterdir()] == [video]
    assert read_manifest(layout.manifest) == [(video, "")]
    assert [v for v, _, _ in iter_split(layout, "train")] == [video_id]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["videos"] == {"train": 1, "val": 0}
    assert metrics["videos_skipped"] == {"not_in_video_list": 0, "over_limit": 3}
    for split in SPLITS:
        with (mirror_root / APES / f"APES-{split}.csv").open(newline="") as handle:
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
    chosen, missing, over_limit = choose_videos({"train": ["t1", "t2"], "val": ["v1", "v2"]}, listed, 2,
                                                Path("list.txt"))
    assert chosen == {"train": ["t1"], "val": ["v2"]} and missing == ["v1"] and over_limit == 1
    with pytest.raises(DataError, match="list.txt: none of the annotated videos"):
        choose_videos(annotated, {}, 0, Path("list.txt"))


def test_cli_with_another_source_leaves_the_folder_as_it_is(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    (out / "videos").mkdir(parents=True)
    (out / "videos" / "kept.mkv").write_bytes(b"downloaded earlier")
    result = CliRunner().invoke(app, ["download", "--source", "synth", "--out", str(out), "--params",
                                      str(tmp_path / "absent.yaml"), "--metrics", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    assert (out / "videos" / "kept.mkv").read_bytes() == b"downloaded earlier"
    assert "nothing fetched" in json.loads((tmp_path / "m.json").read_text())["skipped"]


def dvc(project: Path, *args: str) -> subprocess.CompletedProcess:
    """Run dvc in the scratch project (the venv's apes-cli on PATH, no analytics)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               DVC_NO_ANALYTICS="1")
    return subprocess.run(["dvc", *args], cwd=project, env=env, capture_output=True, text=True, timeout=300,
                          check=False)


def test_dvc_repro_keeps_the_download_and_resumes_it(mirror_root: Path, tmp_path: Path) -> None:
    """The real dvc.yaml's download stage: a change to an unwatched or other stages' params fetches nothing, a
    larger limit fetches only the new videos, and a run killed mid-video resumes it under `dvc repro`."""
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "dvc.yaml", project)
    for name in ("apes_cli", "stages"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    assert dvc(project, "init", "--no-scm", "-q").returncode == 0

    def repro(mirror: Mirror, limit: int, others: dict | None = None,
              **download: object) -> subprocess.CompletedProcess:
        params = yaml.safe_load((ROOT / "params.yaml").read_text())
        params["data"]["source"] = "download"
        for section, values in (others or {}).items():
            params[section].update(values)
        params["download"].update({key: value for key, value in vars(settings(mirror, mirror_root)).items()
                                   if key != "workers"}, limit=limit, **download)
        (project / "params.yaml").write_text(yaml.safe_dump(params))
        return dvc(project, "repro", "download")

    def video_gets(mirror: Mirror) -> list[str]:
        return [entry.path for entry in mirror.log if entry.method == "GET" and "/trainval/" in entry.path]

    raw = RawLayout(project / "data" / "raw_download")
    with Mirror(mirror_root) as mirror:
        assert repro(mirror, 2).returncode == 0
        assert len(video_gets(mirror)) == 2
        first = sorted(path.name for path in raw.videos_dir.iterdir())
        others = {"synth": {"fps": 10}, "crop": {"size": 124, "format": "jpeg"}, "train": {"margin": 0.5}}
        unchanged = repro(mirror, 2, others, workers=1, retries=1, timeout_s=9.0, backoff_s=0.5)
        assert unchanged.returncode == 0 and "didn't change" in unchanged.stdout
        assert len(video_gets(mirror)) == 2
        assert repro(mirror, 3).returncode == 0
        assert len(video_gets(mirror)) == 3 and set(first) < {path.name for path in raw.videos_dir.iterdir()}
    last = [name for name in mirrored_videos(mirror_root).values() if name not in first][-1]
    path = f"{AVA}/trainval/{last}"
    with Mirror(mirror_root, Faults(drop_half={path})) as mirror:
        failed = repro(mirror, 0, retries=0)
    assert failed.returncode != 0 and "gave up after 0 retries" in failed.stderr + failed.stdout
    assert (raw.videos_dir / f"{last}.part").is_file()
    with Mirror(mirror_root) as mirror:
        assert repro(mirror, 0, retries=1).returncode == 0
    size = (mirror_root / path).stat().st_size
    assert [(entry.path, entry.range) for entry in mirror.log if entry.method == "GET" and "/trainval/" in entry.path] \
        == [(path, f"bytes={size // 2}-")]
    assert (raw.videos_dir / last).read_bytes() == (mirror_root / path).read_bytes()
    assert json.loads((project / "metrics" / "download.json").read_text())["resumed"] == 1
