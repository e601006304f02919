"""Sample sets of the triplets stage: task membership, Table 2 statistics and the strategy rules."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from train_data import TinySpec, write_tiny_shards
from typer.testing import CliRunner

from apes_cli.main import app
from stages.core.config import TripletParams
from stages.core.errors import DataError
from stages.core.schemas import TRACKLETS
from stages.learning.losses import pair_masks
from stages.learning.pool import Tracks
from stages.learning.samplers import PKSampler, TripletSampler
from stages.learning.strategies import strategy_named
from stages.learning.tracklets import read_tracklet_table, sampling_statistics
from stages.triplets import run as triplets


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("triplets")
    crops, mels = write_tiny_shards(root, TinySpec(train_videos=2, val_videos=1, crops=3, snippets=2))
    return root, crops, mels


def test_tasks_follow_labels_audible_speech_and_snippets(tiny: tuple[Path, Path, Path]) -> None:
    root, crops, mels = tiny
    metrics = triplets(TripletParams(), crops, mels, root / "triplets")
    seen, heard = read_tracklet_table(root / "triplets", "seen"), read_tracklet_table(root / "triplets", "seen_heard")
    # per video: 4 identities x 3 tracklets, minus one unlabelled and one ambiguous; tracklet 1 of each is silent
    assert seen.num_rows == 2 * 10 and heard.num_rows == 2 * 6
    assert seen.schema.equals(TRACKLETS, check_metadata=False)
    assert all((int(e.split(":")[1]) - 1) % 3 != 1 for e in heard["entity_id"].to_pylist())  # silent ones out
    assert min(heard["n_snippets"].to_pylist()) >= 1
    assert metrics["skipped_unlabelled"] == 2 and metrics["skipped_ambiguous"] == 2
    assert seen["track"].to_pylist() == list(range(seen.num_rows))
    assert metrics["tasks"]["seen"]["strategies"]["within"] == sampling_statistics(seen)["within"]


def test_table2_statistics_match_brute_force(tiny: tuple[Path, Path, Path]) -> None:
    root, crops, mels = tiny
    triplets(TripletParams(), crops, mels, root / "triplets")
    rows = read_tracklet_table(root / "triplets", "seen").to_pylist()
    stats = sampling_statistics(read_tracklet_table(root / "triplets", "seen"))
    within_neg = [sum(o["video_id"] == r["video_id"] and o["identity"] != r["identity"] for o in rows) for r in rows]
    across_neg = [sum(o["identity"] != r["identity"] for o in rows) for r in rows]
    positives = [sum(o["identity"] == r["identity"] for o in rows) - 1 for r in rows]
    keep = [i for i, p in enumerate(positives) if p > 0]
    assert stats["within"]["avg_positive_tracklets"] == pytest.approx(np.mean([positives[i] for i in keep]), abs=1e-3)
    assert stats["within"]["avg_negative_tracklets"] == pytest.approx(np.mean([within_neg[i] for i in keep]), abs=1e-3)
    assert stats["across"]["avg_negative_tracklets"] == pytest.approx(np.mean([across_neg[i] for i in keep]), abs=1e-3)
    assert stats["weak"]["avg_negative_tracklets"] == len(rows) - 1 and not stats["weak"]["clean"]


def test_a_val_identity_in_train_is_refused(tmp_path: Path) -> None:
    crops, mels = write_tiny_shards(tmp_path, TinySpec(train_videos=1, val_videos=1, crops=2, snippets=1))
    (crops / "val" / "val00.parquet").replace(crops / "val" / "train00.parquet")
    (crops / "val" / "train00.parquet").write_bytes((crops / "train" / "train00.parquet").read_bytes())
    with pytest.raises(DataError, match="both train and val"):
        triplets(TripletParams(), crops, mels, tmp_path / "triplets")


def test_cli_reports_missing_shards_with_exit_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["triplets", "--crops-dir", str(tmp_path / "none"), "--metrics",
                                      str(tmp_path / "m.json"), "--out", str(tmp_path / "t")])
    assert result.exit_code == 2
    assert "none" in result.output
    assert not (tmp_path / "m.json").exists()


@st.composite
def track_sets(draw: st.DrawFn) -> Tracks:
    """Random videos/identities/tracklets, identities never shared between videos."""
    videos, identities, counts = [], [], []
    identity = 0
    for video in range(draw(st.integers(1, 4))):
        for _ in range(draw(st.integers(1, 4))):
            for _ in range(draw(st.integers(1, 4))):
                videos.append(video)
                identities.append(identity)
                counts.append(draw(st.integers(1, 4)))
            identity += 1
    count = np.array(counts)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    return Tracks(np.array(videos), np.array(identities), start, count, start, count)


def _item_owner(tracks: Tracks) -> np.ndarray:
    return np.repeat(np.arange(len(tracks)), tracks.crop_count)


@settings(max_examples=150, deadline=None)
@given(track_sets(), st.sampled_from(["within", "across", "weak"]), st.integers(0, 1000))
def test_triplet_rules_hold_for_any_data(tracks: Tracks, strategy: str, seed: int) -> None:
    try:
        sampler = TripletSampler(tracks, strategy_named(strategy), "face", 30, seed)
    except ValueError:
        return  # no tracklet can anchor this strategy here (e.g. one identity per video)
    batch = sampler.batch(epoch=0, step=0)
    owner = _item_owner(tracks)[batch.items["crops"]]
    a, p, n = np.split(owner, 3)
    ai, pi, _ = np.split(batch.items["crops"], 3)
    assert (n != a).all()
    if strategy == "weak":
        assert (p == a).all()  # another frame of the anchor's own tracklet
        assert ((pi != ai) | (tracks.crop_count[a] < 2)).all()
    else:
        assert (tracks.identity[p] == tracks.identity[a]).all() and (p != a).all()
        assert (tracks.identity[n] != tracks.identity[a]).all()
    if strategy == "within":
        assert (tracks.video[n] == tracks.video[a]).all()
    again = sampler.batch(epoch=0, step=0)
    assert all((again.items[k] == batch.items[k]).all() for k in batch.items)


@settings(max_examples=100, deadline=None)
@given(track_sets(), st.sampled_from(["within", "across", "weak"]), st.integers(0, 1000))
def test_pk_batches_mask_pairs_by_the_strategy_rule(tracks: Tracks, strategy: str, seed: int) -> None:
    try:
        sampler = PKSampler(tracks, strategy_named(strategy), "face", 16, seed, k=2)
    except ValueError:
        return
    batch = sampler.batch(epoch=1, step=3)
    owner = _item_owner(tracks)[batch.items["crops"]]
    assert (owner == batch.tracks).all()
    groups = None if batch.groups is None else torch.from_numpy(batch.groups)
    pos, neg = pair_masks(torch.from_numpy(batch.labels), torch.from_numpy(batch.tracks), groups,
                          sampler.strategy.distinct_tracks)
    i, j = np.nonzero(pos.numpy())
    if strategy == "weak":
        assert (owner[i] == owner[j]).all()
    else:
        assert (tracks.identity[owner[i]] == tracks.identity[owner[j]]).all() and (owner[i] != owner[j]).all()
    i, j = np.nonzero(neg.numpy())
    assert (owner[i] != owner[j]).all()
    if strategy != "weak":
        assert (tracks.identity[owner[i]] != tracks.identity[owner[j]]).all()
    if strategy == "within":
        assert (tracks.video[owner[i]] == tracks.video[owner[j]]).all()


def _reference_triplets(tracks: Tracks, strategy: str, n: int, seed: int, epoch: int, step: int) -> np.ndarray:
    """The face crop rows of a plain triplet batch, re-derived from the rules with Python lists and the same draws."""
    rng = np.random.default_rng([seed, epoch, step])
    members = list(range(len(tracks)))  # every tracklet has crops
    same_identity = {t: [u for u in members if tracks.identity[u] == tracks.identity[t]] for t in members}
    same_video = {t: [u for u in members if tracks.video[u] == tracks.video[t]] for t in members}
    other_in_video = {t: [u for u in same_video[t] if tracks.identity[u] != tracks.identity[t]] for t in members}
    eligible = {
        "weak": lambda t: tracks.crop_count[t] >= 2 and len(members) >= 2,
        "within": lambda t: len(same_identity[t]) >= 2 and len(other_in_video[t]) > 0,
        "across": lambda t: len(same_identity[t]) >= 2 and len(same_identity[t]) < len(members),
    }[strategy]
    anchors = [t for t in members if eligible(t)]

    def uniform(sizes: list[int]) -> list[int]:
        return [min(int(r * s), s - 1) for r, s in zip(rng.random(len(sizes)), sizes)]

    def draw(options, bad) -> list[int]:  # all rows, then the rows still breaking the rule, until none does
        chosen, rows = [0] * n, list(range(n))
        while rows:
            for row, pick in zip(rows, uniform([len(options(row)) for row in rows])):
                chosen[row] = options(row)[pick]
            rows = [row for row in rows if bad(row, chosen[row])]
        return chosen

    a = [anchors[i] for i in uniform([len(anchors)] * n)]
    if strategy == "weak":
        p = a
        n_ = [[m for m in members if m != t][d] for t, d in zip(a, uniform([len(members) - 1] * n))]
    else:
        p = draw(lambda row: same_identity[a[row]], lambda row, t: t == a[row])
        pool = (lambda row: same_video[a[row]]) if strategy == "within" else (lambda row: members)
        n_ = draw(pool, lambda row, t: tracks.identity[t] == tracks.identity[a[row]])
    start, count = tracks.crop_start, tracks.crop_count
    a_items = [start[t] + u for t, u in zip(a, uniform([count[t] for t in a]))]
    if strategy == "weak":
        shifted = uniform([max(count[t] - 1, 1) for t in p])
        p_items = [start[t] + (s + (s >= i - start[t]) if count[t] >= 2 else i - start[t])
                   for t, s, i in zip(p, shifted, a_items)]
    else:
        p_items = [start[t] + u for t, u in zip(p, uniform([count[t] for t in p]))]
    n_items = [start[t] + u for t, u in zip(n_, uniform([count[t] for t in n_]))]
    return np.array(a_items + p_items + n_items)


@settings(max_examples=60, deadline=None)
@given(track_sets(), st.sampled_from(["within", "across", "weak"]), st.integers(0, 1000), st.integers(0, 5))
def test_triplet_batches_equal_their_rederivation_from_the_rules(tracks: Tracks, strategy: str, seed: int,
                                                                 step: int) -> None:
    try:
        sampler = TripletSampler(tracks, strategy_named(strategy), "face", 30, seed)
    except ValueError:
        return
    expected = _reference_triplets(tracks, strategy, 10, seed, 1, step)
    assert np.array_equal(sampler.batch(1, step).items["crops"], expected)


def test_cli_writes_tables_atomically_and_the_metrics(tiny: tuple[Path, Path, Path]) -> None:
    root, crops, mels = tiny
    result = CliRunner().invoke(app, ["triplets", "--crops-dir", str(crops), "--mels-dir", str(mels),
                                      "--out", str(root / "out"), "--metrics", str(root / "m.json")])
    assert result.exit_code == 0, result.output
    written = json.loads((root / "m.json").read_text())
    assert written["tasks"]["seen"]["strategies"] == sampling_statistics(read_tracklet_table(root / "out", "seen"))
    assert not list((root / "out").glob(".*.tmp"))
    assert pq.read_table(root / "out" / "seen.parquet").num_rows == 20
    (root / "out" / "seen.parquet").replace(root / "out" / "seen_heard.parquet")
    with pytest.raises(DataError, match="another task"):
        read_tracklet_table(root / "out", "seen_heard")
