"""apes-cli download: the real AVA-ActiveSpeaker videos, annotations and APES labels, resumable and md5-verified."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from tqdm import tqdm

from apes_cli.common import (
    Bar,
    MetricsOption,
    ParamsOption,
    friendly_errors,
    overridden,
    report_metrics,
    run_stage,
)
from stages.core.config import load_params

NAME = "download"
DOWNLOAD_DIR = "data/raw_download"  # DataParams.raw_dir with data.source: download
HELP = (
    "Fetch the real AVA-ActiveSpeaker videos and annotation archives and the APES identity labels into the "
    "raw layout (docs/data.md), in parallel, resumable (HTTP Range) and md5-verified. See docs/download.md."
)


class ByteBar(Bar):
    """The CLI progress bar, counting bytes (every phase of this stage is measured in bytes)."""

    def start(self, total: int, description: str) -> None:
        """Open a byte-scaled bar for a new phase."""
        self.close()
        self._bar = tqdm(total=total, desc=description, unit="B", unit_scale=True, unit_divisor=1024,
                         file=sys.stderr, dynamic_ncols=True, mininterval=0.5, leave=True)


@friendly_errors
def command(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path, typer.Option(
        "--out", help="Raw layout directory to fill; kept between runs, which resume.")] = Path(DOWNLOAD_DIR),
    source: Annotated[Optional[str], typer.Option(
        "--source", help="The pipeline's data.source (dvc.yaml passes it): anything but 'download' leaves --out "
                         "as it is and writes only the metrics. Default: download.")] = None,
    base_url: Annotated[Optional[str], typer.Option(
        "--base-url", help="AVA mirror: serves annotations/<file> and trainval/<video> "
                           "(default: download.base_url).")] = None,
    apes_url: Annotated[Optional[str], typer.Option(
        "--apes-url", help="Base URL of APES-train.csv and APES-val.csv (default: download.apes_url).")] = None,
    limit: Annotated[Optional[int], typer.Option(
        "--limit", min=0, help="Fetch only the first N annotated videos, train and val alternating; 0 = all "
                        "(default: download.limit).")] = None,
    workers: Annotated[Optional[int], typer.Option(
        "--workers", min=1, help="Parallel downloads (default: download.workers).")] = None,
    metrics: MetricsOption = Path("metrics/download.json"),
) -> None:
    """Download AVA + APES into the raw layout."""
    from stages import download
    if source not in (None, "download"):
        out.mkdir(parents=True, exist_ok=True)
        report_metrics({"skipped": f"data.source is {source!r}: nothing fetched, {out} left as it was"}, metrics)
        return
    loaded = load_params(params)
    settings = overridden(loaded.download, "download", base_url=base_url, apes_url=apes_url, limit=limit,
                          workers=workers)
    run_stage(download.run, settings, out, metrics=metrics, bar=ByteBar())
