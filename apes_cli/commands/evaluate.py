"""apes-cli evaluate: benchmark metrics of a trained run, an untrained network, a pretrained embedder, random, or
a file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from apes_cli.common import ParamsOption, friendly_errors, report_metrics, run_stage
from stages.core.choices import Modality, Sampling, Task
from stages.core.config import load_params
from stages.core.errors import ConfigError
from stages.core.runs import Run

NAME = "evaluate"
PRETRAINED_MODALITIES = (Modality.face, Modality.voice)
HELP = (
    "Rank the val tracklets of each video by embedding distance and write P@K, R@K and mAP (paper 4.2).\n\n"
    "A trained run:   apes-cli evaluate --modality face --sampling within --task seen_heard\n\n"
    "Random weights:  apes-cli evaluate --modality face --task seen_heard --untrained\n\n"
    "Pretrained:      apes-cli evaluate --modality voice --task seen_heard --pretrained  (dlib face, CAM++ "
    "voice)\n\n"
    "Random ranking:  apes-cli evaluate --random --task seen_heard\n\n"
    "Any method:      apes-cli evaluate --embeddings mine.parquet --metrics mine.json  (docs/evaluation.md)\n\n"
    "Active speakers: apes-cli evaluate --asd predictions.csv  (the official AVA-ActiveSpeaker AP of SPEAKING_AUDIBLE)"
)


def _required(value: str | None, option: str) -> str:
    """An option this mode cannot do without."""
    if value is None:
        raise ConfigError(option, "required here (see apes-cli evaluate --help)", "command line")
    return value


@friendly_errors
def command(
    modality: Annotated[Modality | None, typer.Option(help="Which network.")] = None,
    sampling: Annotated[Sampling | None, typer.Option(help="Training sampling of the run.")] = None,
    task: Annotated[Task | None, typer.Option(help="Benchmark task.")] = None,
    seed: Annotated[int | None, typer.Option(
        min=0, help="Training seed of the run (default: params seed); also seeds the untrained weights.")] = None,
    untrained: Annotated[bool, typer.Option(
        "--untrained", help="Evaluate the network with seeded random weights (the report's Untrained row).")] = False,
    pretrained: Annotated[bool, typer.Option(
        "--pretrained", help="Evaluate the off-the-shelf embedder of the modality: dlib's face descriptor or "
                             "the CAM++ speaker embedder (the report's Pretrained rows).")] = False,
    random: Annotated[bool, typer.Option(
        "--random", help="The exact expected metrics of a random ranking (the report's Random row).")] = False,
    embeddings: Annotated[Path | None, typer.Option(
        help="Evaluate this embeddings Parquet (video_id, entity_id, identity, embedding) instead.")] = None,
    asd: Annotated[Path | None, typer.Option(
        help="Score this active speaker predictions CSV instead: the AVA-ActiveSpeaker columns video_id, "
             "frame_timestamp, entity_box_x1, y1, x2, y2, label (SPEAKING_AUDIBLE), entity_id, plus score, as "
             "ActivityNet's get_ava_active_speaker_performance.py reads it.")] = None,
    asd_groundtruth: Annotated[Path | None, typer.Option(
        help="Ground truth for --asd: an AVA-ActiveSpeaker CSV or a folder of them (default: the val annotations "
             "of data.raw_dir).")] = None,
    out: Annotated[Path, typer.Option(
        help="Folder of the val embeddings written: <out>/<run>.parquet or <out>/pretrained_<modality>_<task>.parquet."
    )] = Path("data/embeddings"),
    metrics: Annotated[Path | None, typer.Option(
        help="Metrics JSON (default: metrics/eval_<run>.json, metrics/eval_pretrained_<modality>_<task>.json, "
             "metrics/eval_random_<task>.json, metrics/eval_file_<name>.json or metrics/asd_file_<name>.json)."
    )] = None,
    crops_dir: Annotated[Path, typer.Option(help="Crop shards (read: <dir>/val/*.parquet).")] = Path("data/crops"),
    mels_dir: Annotated[Path, typer.Option(help="Mel shards (read: <dir>/val/*.parquet).")] = Path("data/mels"),
    models_dir: Annotated[Path, typer.Option(help="Trained runs: <dir>/<run>/model.pt.")] = Path("models"),
    decoded_dir: Annotated[Path, typer.Option(
        help="Decoded audio, for --pretrained voice (read: <dir>/audio/val/*.wav).")] = Path("data/decoded"),
    workers: Annotated[int, typer.Option(
        min=0, help="With --pretrained: threads for dlib's face descriptor and for the CAM++ voice embedder "
                    "(0 = one per core).")] = 0,
    reuse: Annotated[Path | None, typer.Option(
        help="With --pretrained: take the tracklets' embeddings from this earlier --pretrained file of the same "
             "embedder and settings instead of embedding again (Seen & Heard from Seen: every Seen & Heard "
             "tracklet is a Seen tracklet, cut the same; the same numbers).")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Evaluate one run, a baseline, an embeddings file or active speaker predictions."""
    if asd is not None:
        from stages import asd as asd_stage
        raw_dir = None if asd_groundtruth is not None else Path(load_params(params).data.raw_dir)
        report_metrics(asd_stage.run_predictions_file(asd, asd_groundtruth, raw_dir),
                       metrics or Path("metrics") / f"asd_file_{asd.stem}.json")
        return
    if embeddings is not None:
        from stages import evaluate as stage
        report_metrics(stage.run_embeddings_file(embeddings),
                       metrics or Path("metrics") / f"eval_file_{embeddings.stem}.json")
        return
    task = Task(_required(task, "--task"))
    if random:
        from stages import evaluate as stage
        report_metrics(stage.run_random(crops_dir, mels_dir, task),
                       metrics or Path("metrics") / f"eval_random_{task}.json")
        return
    loaded = load_params(params)
    if pretrained:
        from stages import evaluate_pretrained
        modality = Modality(_required(modality, "--modality"))
        if modality not in PRETRAINED_MODALITIES:
            raise ConfigError("--modality", f"no pretrained {modality} embedder; expected "
                                            f"{' or '.join(PRETRAINED_MODALITIES)}", "command line")
        run_stage(evaluate_pretrained.run, loaded.pretrained_baselines, modality, task, crops_dir, mels_dir,
                  decoded_dir, out, workers, reuse,
                  metrics=metrics or Path("metrics") / f"eval_pretrained_{modality}_{task}.json")
        return
    from stages import evaluate as stage
    spec = Run(_required(modality, "--modality"), None if untrained else _required(sampling, "--sampling"), task,
               loaded.seed if seed is None else seed, seed is not None)
    result = stage.run(loaded.evaluate, spec, crops_dir, mels_dir, models_dir, out,
                       precision=loaded.train.precision, untrained_normalize=loaded.train.normalize)
    report_metrics(result, metrics or Path("metrics") / f"eval_{spec.name}.json")
