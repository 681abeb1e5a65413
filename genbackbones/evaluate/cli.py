"""`genbackbones evaluate`: thin command-line wrapper over `genbackbones.evaluate.evaluate`.

Mounted by `genbackbones.cli` through `register(app)`. Heavy imports happen inside the
command so that `genbackbones --help` stays fast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

EPILOG = ("BACKBONE: a run folder, an export folder, local-dir:PATH, hf-hub:org/name, or a timm name "
          "(= timm's pretrained weights, from the Hugging Face cache). "
          "Settings for --set: epochs, min_steps, max_steps, batch_size, lr_head, lr_backbone, weight_decay, "
          "warmup_steps, flip, decoder_channels, decoder_stride, eval_batch_size; "
          "landmarks: heatmap, ridge, ridge_grid; "
          "classification: protocol, pool_grid; data: data.pool, data.test_size, data.test_fraction, "
          "data.split_seed, data.faces_seed. See the README, section Evaluate.")


def register(app: typer.Typer) -> None:
    from ..cli import user_errors

    @app.command("evaluate", epilog=EPILOG)
    @user_errors
    def evaluate_cmd(
        backbones: list[str] = typer.Argument(..., metavar="BACKBONE...", help="Backbones to compare (first = "
                                              "the one the model index is about)."),
        task: str = typer.Option("segmentation", "--task", "-t", help="segmentation | landmarks | classification."),
        data: str = typer.Option("faces", "--data", help="faces (bundled), a folder, a saved `datasets` dataset "
                                 "or a cached Hub dataset id."),
        labels: str = typer.Option("4,16,64", "--labels", help="Numbers of labelled training images, e.g. "
                                   "4,16,64,all."),
        seeds: int = typer.Option(3, "--seeds", help="Seeds 0..n-1: labelled subset, head init, data order."),
        baselines: str = typer.Option("imagenet,random", "--baselines", help="imagenet, random (comma list) or "
                                      "none; one per architecture among the backbones."),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default "
                                           "evaluation/<timestamp>); must not exist or be empty."),
        epochs: Optional[float] = typer.Option(None, "--epochs", help="Fine-tuning epochs before the step clamp."),
        set_: list[str] = typer.Option([], "--set", help="Protocol/data setting, e.g. --set lr_backbone=3e-4 "
                                       "--set data.pool=500."),
        finetune: Optional[bool] = typer.Option(None, "--finetune/--linear", help="Classification: fine-tune the "
                                                "backbone, or a linear probe on frozen features (default)."),
        run: Optional[Path] = typer.Option(None, "--run", help="Also write RUN/evaluation/model_index.json "
                                           "(RUN must be one of the BACKBONEs); `genbackbones export RUN` adds it "
                                           "to the card."),
        target: Optional[str] = typer.Option(None, "--target", "--label-column", help="Classification label "
                                             "(faces: hair_colour, skin_tone, hair_style, head_pose, smiling, "
                                             "glasses; datasets: a column; patterns: a group name)."),
        image_column: str = typer.Option("image", "--image-column", help="Dataset image column."),
        mask_column: str = typer.Option("mask", "--mask-column", help="Dataset mask column."),
        landmark_columns: Optional[str] = typer.Option(None, "--landmark-columns", help="One [K,2] column or "
                                                       "x,y column pairs (datasets, landmarks.csv)."),
        eye_indices: str = typer.Option("0,1", "--eye-indices", help="The two landmarks whose distance "
                                        "normalises NME."),
        classes: Optional[str] = typer.Option(None, "--classes", help="Segmentation class names for index masks, "
                                              "comma-separated."),
        class_colors: Optional[str] = typer.Option(None, "--class-colors", help="Colour-coded masks: a JSON/YAML "
                                                   "file or name=#rrggbb,..."),
        label_pattern: Optional[str] = typer.Option(None, "--label-pattern", help="Regex with named groups on file "
                                                    "names, e.g. '(?P<age>\\d+)_(?P<gender>\\d)_'."),
        resolution: Optional[int] = typer.Option(None, "--resolution", help="Evaluation image size (default: the "
                                                 "first backbone's pretrained_cfg input size)."),
        device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
    ):
        """Fine-tune / probe backbones on few labels and compare them with ImageNet and random init."""
        _passive_openmp()
        from ..errors import UserError
        from . import evaluate
        from .data import DataOptions

        try:
            eyes = tuple(int(i) for i in eye_indices.split(","))
        except ValueError:
            eyes = ()
        if len(eyes) != 2:
            raise UserError(f"--eye-indices {eye_indices!r}: give two landmark indices, e.g. 0,1")
        options = DataOptions(source=data, resolution=resolution, target=target, image_column=image_column,
                              mask_column=mask_column, landmark_columns=_split(landmark_columns), eye_indices=eyes,
                              classes=_split(classes), class_colors=class_colors, label_pattern=label_pattern)
        protocol = None if finetune is None else ("finetune" if finetune else "linear")
        evaluate(backbones, task=task, data=options, labels=labels, seeds=seeds,
                 baselines=[b.strip() for b in baselines.split(",") if b.strip()], overrides=set_, epochs=epochs,
                 protocol=protocol, out=out, run=run, device=device)


def _passive_openmp() -> None:
    """Idle OpenMP threads sleep instead of spinning, unless the user chose otherwise.

    Must run before torch is imported. On a CPU shared with other processes, spinning
    threads wait for descheduled peers at every parallel region: measured on 2 shared
    cores, a fine-tuning step took 10.4 s with spinning and 0.58 s without.
    """
    import os
    import sys

    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _split(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None
