"""`genbackbones evaluate`: thin command-line wrapper over `genbackbones.evaluate.evaluate`.

Heavy imports happen inside the command so that `genbackbones --help` stays fast.
"""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

import typer

from ..evaluate.options import DATA_FLAGS

FLAG = {f.field: f.help for f in DATA_FLAGS}

EPILOG = ("BACKBONE: a run folder, an export folder, local-dir:PATH, hf-hub:org/name, or a timm name "
          "(= timm's pretrained weights, from the Hugging Face cache). "
          "--data: faces, a folder in a layout of docs/evaluate.md, a save_to_disk folder, a cached Hub dataset id, "
          "or a builder name with --data-dir. "
          "Settings for --set: epochs, min_steps, max_steps, batch_size, lr_head, lr_backbone, weight_decay, "
          "warmup_steps, flip, decoder_channels, decoder_stride, eval_batch_size; "
          "landmarks: heatmap, ridge, ridge_grid; "
          "classification: protocol, pool_grid, knn_k, knn_temperature; data: data.pool, data.test_size, "
          "data.test_fraction, data.split_seed, data.faces_seed, data.max_outside. See docs/evaluate.md.")


app = typer.Typer()


@app.command("evaluate", epilog=EPILOG)
def evaluate_cmd(
    backbones: list[str] = typer.Argument(..., metavar="BACKBONE...", help="Backbones to compare (first = "
                                          "the one the model index is about)."),
    task: str = typer.Option("segmentation", "--task", "-t", help="segmentation | landmarks | classification."),
    data: str = typer.Option("faces", "--data", help="faces (bundled), a folder, a saved `datasets` dataset, "
                             "a cached Hub dataset id, or a builder name with --data-dir."),
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
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Classification: linear (ridge probe on "
                                           "frozen features, default), knn (k=20 cosine vote) or finetune."),
    finetune: Optional[bool] = typer.Option(None, "--finetune/--linear", help="Classification: the same as "
                                            "--protocol finetune / --protocol linear."),
    run: Optional[Path] = typer.Option(None, "--run", help="Also write RUN/evaluation/model_index.json "
                                       "(RUN must be one of the BACKBONEs); `genbackbones export RUN` adds it "
                                       "to the card."),
    target: Optional[str] = typer.Option(None, "--target", "--label-column", help=FLAG["target"]),
    image_column: Optional[str] = typer.Option(None, "--image-column", help=FLAG["image_column"]),
    mask_column: Optional[str] = typer.Option(None, "--mask-column", help=FLAG["mask_column"]),
    landmark_columns: Optional[str] = typer.Option(None, "--landmark-columns", help=FLAG["landmark_columns"]),
    eye_indices: Optional[str] = typer.Option(None, "--eye-indices", help=FLAG["eye_indices"]),
    classes: Optional[str] = typer.Option(None, "--classes", help=FLAG["classes"]),
    class_colors: Optional[str] = typer.Option(None, "--class-colors", help=FLAG["class_colors"]),
    label_pattern: Optional[str] = typer.Option(None, "--label-pattern", help=FLAG["label_pattern"]),
    data_config: Optional[str] = typer.Option(None, "--data-config", help=FLAG["data_config"]),
    data_split: Optional[str] = typer.Option(None, "--data-split", help=FLAG["data_split"]),
    data_revision: Optional[str] = typer.Option(None, "--data-revision", help=FLAG["data_revision"]),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help=FLAG["data_dir"]),
    resolution: Optional[int] = typer.Option(None, "--resolution", help="Evaluation image size (default: the "
                                             "first backbone's pretrained_cfg input size)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda, cuda:1 ..."),
):
    """Fine-tune / probe backbones on few labels and compare them with ImageNet and random init."""
    from ..evaluate import evaluate
    from ..evaluate.options import choose_protocol, data_options
    from ..outputs import claim_new, hold, refuse_current_folder

    options = data_options(
        data, resolution, target=target, image_column=image_column, mask_column=mask_column,
        landmark_columns=landmark_columns, eye_indices=eye_indices, classes=classes, class_colors=class_colors,
        label_pattern=label_pattern, data_config=data_config, data_split=data_split, data_revision=data_revision,
        data_dir=data_dir)
    # one writer per output folder (outputs.py); a default name is one no other command holds
    if out is not None:
        refuse_current_folder(out)  # results are swapped in as one folder (evaluate/report.py)
    claimed = hold(out) if out is not None else claim_new(Path("evaluation"), datetime.now().strftime("%Y%m%d-%H%M%S"))
    with claimed as out:
        evaluate(backbones, task=task, data=options, labels=labels, seeds=seeds,
                 baselines=[b.strip() for b in baselines.split(",") if b.strip()], overrides=set_, epochs=epochs,
                 protocol=choose_protocol(protocol, finetune), out=out, run=run, device=device,
                 command=sys.argv[1:])  # Ctrl-C prints it back as the command that continues
