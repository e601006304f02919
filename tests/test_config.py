"""params.yaml is validated in one place: unknown keys and bad values name the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from stages.core.config import Params, load_params, params_from_dict
from stages.core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_project_params_load_and_match_defaults_types() -> None:
    params = load_params(ROOT / "params.yaml")
    assert isinstance(params, Params)
    assert params.data.source in ("synth", "download")
    assert params.train.face.lr > 0
    assert params_from_dict({"data": {"source": "download"}}).data.raw_dir == "data/raw_download"
    authors = params_from_dict({"train": {"profile": "authors", "compile": True}}).train
    assert (authors.profile, authors.compile, Params().train.compile, Params().train.precision) == \
        ("authors", True, False, "auto")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"train": {"marginn": 1.0}}, "train.marginn"),
        ({"bogus": 1}, "bogus"),
        ({"synth": {"nuisance": 1.5}}, "synth.nuisance"),
        ({"crop": {"size": "big"}}, "crop.size"),
        ({"train": {"face": {"lr": -1.0}}}, "train.face.lr"),
        ({"train": {"mining": "hardest"}}, "train.mining"),
        ({"triplets": {"tasks": ["heard"]}}, "triplets.tasks[0]"),
        ({"synth": {"shot_seconds": [3.0]}}, "synth.shot_seconds"),
        ({"train": {"normalize": "yes"}}, "train.normalize"),
        ({"train": {"profile": "papers"}}, "train.profile"),
        ({"train": {"compile": "on"}}, "train.compile"),
        ({"train": {"precision": "fp16"}}, "train.precision"),
        ({"crop": {"format": "png"}}, "crop.format"),
        ({"crop": {"quality": 0}}, "crop.quality"),
        ({"data": {"raw_dir": "data/raw"}}, "data.raw_dir"),
        ({"data": {"source": "s3"}}, "data.source"),
    ],
)
def test_bad_params_name_the_key(raw: dict, key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        params_from_dict(raw)
    assert caught.value.key == key
    assert key in str(caught.value)


def test_partial_section_keeps_other_defaults(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": {"margin": 0.5}}))
    params = load_params(path)
    assert params.train.margin == 0.5
    assert params.train.batch_size == Params().train.batch_size


def test_not_a_mapping_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_params(path)


def test_cli_reports_bad_params_and_exits_nonzero(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from apes_cli.main import app

    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"synth": {"fps": 500}}))
    result = CliRunner().invoke(app, ["synth", "--params", str(path)])
    assert result.exit_code == 2
    assert "synth.fps" in result.output
