"""`lowrank train`: train an artifact (or a recipe's model) from scratch, in place, with checkpoints."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from ..choices import AMP_MODES, DEEPTWIST_LOWERINGS, DEVICES, MEMORY_FORMATS, OPTIMIZERS, ORTH_KINDS, SCHEDULES
from ..errors import LowRankError
from ._common import TRUST_CODE_HELP, choices, console, err_console, fail, human, json_text

Optim = choices("Optim", OPTIMIZERS)
Schedule = choices("Schedule", SCHEDULES)
Amp = choices("Amp", AMP_MODES)
Orth = choices("Orth", ORTH_KINDS)
Device = choices("Device", DEVICES)
MemoryFormat = choices("MemoryFormat", MEMORY_FORMATS)
Lowering = choices("Lowering", DEEPTWIST_LOWERINGS)


def _value(v: Any) -> Any:
    return v.value if isinstance(v, Enum) else v


def train(
    directory: Annotated[
        Path | None,
        typer.Argument(help="Artifact directory from `lowrank convert -o DIR` (trained in place).", show_default=False),
    ] = None,
    recipe: Annotated[
        Path | None,
        typer.Option(
            help="YAML recipe (recipes/*.yaml): converts its model into its output DIR, then trains. With DIR, only its training keys are used."
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("--output", "-o", help="Artifact directory for --recipe (default: the recipe's 'output')."),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option(
            help="Dataset NAME[:PATH]: digits (embedded), synthetic, cifar10, cifar100, mnist, fashion-mnist, svhn, imagefolder."
        ),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help="Number of epochs. [default: 10]")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Batch size per process. [default: 128]")] = None,
    optimizer: Annotated[Optim | None, typer.Option(help="Optimizer. [default: sgd]")] = None,
    lr: Annotated[float | None, typer.Option(help="Peak learning rate. [default: 0.1]")] = None,
    momentum: Annotated[float | None, typer.Option(help="SGD momentum. [default: 0.9]")] = None,
    nesterov: Annotated[
        bool | None, typer.Option("--nesterov/--no-nesterov", help="Nesterov momentum. [default: off]")
    ] = None,
    weight_decay: Annotated[
        float | None, typer.Option(help="Weight decay (never on biases / norm weights). [default: 5e-4]")
    ] = None,
    frobenius_decay: Annotated[
        bool | None,
        typer.Option(
            "--frobenius-decay/--no-frobenius-decay",
            help="Decay the kernel each low-rank layer computes, not each factor (Khodak et al. 2021). [default: off]",
        ),
    ] = None,
    schedule: Annotated[
        Schedule | None, typer.Option(help="Learning-rate schedule, per step. [default: cosine]")
    ] = None,
    warmup_epochs: Annotated[
        float | None, typer.Option(help="Linear warm-up epochs (fractions allowed). [default: 0.1]")
    ] = None,
    label_smoothing: Annotated[float | None, typer.Option(help="Label smoothing. [default: 0]")] = None,
    grad_clip: Annotated[
        float | None, typer.Option(help="Clip the gradient norm to this value. [default: off]")
    ] = None,
    seed: Annotated[
        int | None, typer.Option(help="Seed for data order, augmentation and dropout. [default: 0]")
    ] = None,
    amp: Annotated[
        Amp | None,
        typer.Option(help="Mixed precision: auto = fp16 on CUDA, off on CPU; bf16 works on CPU. [default: auto]"),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            help="Training method: elrt (low-rank from scratch), dense (baseline), lrpet (dense + low-rank projection, SVD at the end), deeptwist (dense + periodic low-rank distortion). [default: elrt]"
        ),
    ] = None,
    orth: Annotated[
        Orth | None, typer.Option(help="ELRT orthogonality regulariser on the factor matrices. [default: so]")
    ] = None,
    orth_weight: Annotated[
        float | None, typer.Option(help="Coefficient of the regulariser (default chosen by measurement, see README).")
    ] = None,
    project_every: Annotated[
        int | None, typer.Option(help="LRPET: also project every N steps (0 = once per epoch). [default: 0]")
    ] = None,
    energy_transfer: Annotated[
        float | None,
        typer.Option(
            help="LRPET: energy-transfer exponent, 1 keeps the Frobenius energy, 0 = plain truncation. [default: 1]"
        ),
    ] = None,
    bn_rectify: Annotated[
        bool | None,
        typer.Option(
            "--bn-rectify/--no-bn-rectify", help="LRPET: project with the following batch norm's scale. [default: on]"
        ),
    ] = None,
    distort_every: Annotated[
        int | None, typer.Option(help="DeepTwist: steps between low-rank distortions (S_D). [default: 200]")
    ] = None,
    lowering: Annotated[
        Lowering | None,
        typer.Option(
            help="DeepTwist: distortion form; format = the plan's (Tucker-2/SVD), out/spatial = SVD of a 2-D reshape, tiled = SVD per tile. [default: format]"
        ),
    ] = None,
    tiles: Annotated[
        int | None, typer.Option(help="DeepTwist: tiles per side for --lowering tiled. [default: 2]")
    ] = None,
    device: Annotated[Device | None, typer.Option(help="Device. [default: auto]")] = None,
    memory_format: Annotated[
        MemoryFormat | None,
        typer.Option(
            help="Weight/image layout while training: auto = channels_last for low-rank models on CPU (measured 0.65-0.74x the step time), contiguous otherwise. [default: auto]"
        ),
    ] = None,
    workers: Annotated[int | None, typer.Option(help="Data-loader workers. [default: automatic]")] = None,
    image_size: Annotated[int | None, typer.Option(help="Input resolution override. [default: the dataset's]")] = None,
    download: Annotated[
        bool | None,
        typer.Option("--download/--no-download", help="Let torchvision download the dataset (needs internet)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from DIR/train_state.pt exactly where it stopped.")
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="With --recipe: replace an existing output directory.")
    ] = False,
    nproc: Annotated[
        int, typer.Option(help="Launch torchrun with N processes on this machine (DDP; gloo on CPU, nccl on GPU).")
    ] = 1,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bar or per-epoch lines; only the final summary.")
    ] = False,
    json: Annotated[
        bool, typer.Option("--json", help="One JSON line per epoch and a final JSON summary on stdout.")
    ] = False,
    trust_code: Annotated[bool, typer.Option("--trust-code", help=TRUST_CODE_HELP)] = False,
) -> None:
    """Train a low-rank model from scratch (ELRT) or a dense baseline; results are written back into DIR.

    DIR gets metrics.jsonl (one line per epoch), model.safetensors (latest), best.safetensors,
    train_state.pt (for --resume) and summary.json. Ctrl-C saves the state; --resume continues.

    Examples: lowrank train r20 --data digits --epochs 5 ·
    lowrank train --recipe recipes/resnet20_cifar10_elrt.yaml --data cifar10:~/data ·
    lowrank train r20 --data synthetic --nproc 2
    """
    # the options, the recipe and the paths are checked before torch is imported (a mistake is refused at once)
    # and before the recipe's model is converted (nothing is written for a run that cannot start)
    from ..artifact import STATE_FILE, DirectoryLock
    from ..train.config import TrainConfig
    from ..train.recipes import load_recipe

    given = {
        k: _value(v)
        for k, v in dict(
            data=data,
            epochs=epochs,
            batch_size=batch_size,
            optimizer=optimizer,
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            frobenius_decay=frobenius_decay,
            schedule=schedule,
            warmup_epochs=warmup_epochs,
            label_smoothing=label_smoothing,
            grad_clip=grad_clip,
            seed=seed,
            amp=amp,
            method=method,
            orth=orth,
            orth_weight=orth_weight,
            device=device,
            project_every=project_every,
            energy_transfer=energy_transfer,
            bn_rectify=bn_rectify,
            distort_every=distort_every,
            lowering=lowering,
            tiles=tiles,
            memory_format=memory_format,
            workers=workers,
            image_size=image_size,
            download=download,
        ).items()
        if v is not None
    }
    if nproc < 1:
        raise LowRankError(f"--nproc {nproc} must be >= 1")
    under_torchrun = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rec = load_recipe(recipe) if recipe is not None else None
    convert_recipe = False
    if directory is None:
        if rec is None:
            raise LowRankError(
                "give an artifact directory (lowrank train DIR) or a recipe (lowrank train --recipe FILE)"
            )
        directory = Path(output or rec.output or "")
        if not str(directory):
            raise LowRankError(f"{rec.source} has no 'output'; pass -o DIR")
        convert_recipe = not (resume and (directory / STATE_FILE).is_file())
    elif not directory.is_dir():
        raise LowRankError(
            f"{directory} is not a directory; convert a model first: lowrank convert MODEL -o {directory}"
        )

    base: dict[str, Any] = dict(rec.train) if rec is not None else {}
    if not resume:
        if not convert_recipe and (directory / STATE_FILE).is_file() and not force:
            raise LowRankError(
                f"{directory} already holds a training run; continue it with --resume or start over with --force"
            )
        config = TrainConfig.from_dict({**base, **given}, source="lowrank train")
        if convert_recipe and rec is not None and config.method == "dense" and not rec.dense:
            raise LowRankError(
                f"{rec.source} converts {rec.model} to low rank, and --method dense trains the dense baseline; "
                "add `dense: true` to the recipe for the baseline, or train with --method elrt"
            )
    if convert_recipe and force and directory.is_dir():
        DirectoryLock.check(directory)  # not a directory another run is training (said now, not after converting)
    from ..train.checkpoint import load_train_state
    from ..train.run import refuse_dense_on_low_rank, train_artifact
    from ..train.trainer import TrainingDiverged, TrainingInterrupted

    if not resume and not convert_recipe:
        refuse_dense_on_low_rank(directory, config.method, cli=True)

    with contextlib.ExitStack() as cleanup:
        if convert_recipe:
            created = not directory.exists()
            _convert_recipe(rec, directory, force=force, under_torchrun=under_torchrun, trust_code=trust_code)
            if created:  # a run that cannot start (bad --data, --device, --seed ...) leaves nothing behind
                cleanup.enter_context(_removed_unless_started(directory))
        if resume:
            base.update(load_train_state(directory / STATE_FILE)["config"])
            config = TrainConfig.from_dict({**base, **given}, source="lowrank train")
            refuse_dense_on_low_rank(directory, config.method, cli=True)

        if nproc > 1 and not under_torchrun:
            argv = ["train", str(directory), *_flags(given)]
            argv += (["--recipe", str(recipe)] if recipe is not None else []) + (["--resume"] if resume else [])
            argv += (
                (["--force"] if force and recipe is None else [])
                + (["--quiet"] if quiet else [])
                + (["--json"] if json else [])
            )
            argv += ["--trust-code"] if trust_code else []
            sys.exit(_launch(nproc, argv, directory))

        rank0 = int(os.environ.get("RANK", "0")) == 0

        def on_epoch(record: dict[str, Any]) -> None:
            if json:
                print_json_line(record)
            elif not quiet:
                top5 = f"  top5 {record['val_top5']:5.1f}%" if record["val_top5"] == record["val_top5"] else ""
                orth_txt = f"  orth {record['orth_penalty']:.3g}" if config.method == "elrt" else ""
                console.print(
                    f"epoch {record['epoch'] + 1}/{config.epochs}  loss {record['train_loss']:.4f}  "
                    f"val top1 {record['val_top1']:5.1f}%{top5}{orth_txt}  lr {record['lr']:.3g}  "
                    f"{record['epoch_seconds']:.1f}s  {record['images_per_s']:,.0f} img/s",
                    highlight=False,
                )

        try:
            _, summary = train_artifact(
                directory, config, resume=resume, progress=not (quiet or json), on_epoch=on_epoch, trust_code=trust_code
            )
        except TrainingInterrupted as exc:
            if rank0:
                err_console.print(
                    f"interrupted: {exc}; state saved in {directory}; continue with `lowrank train {directory} --resume`",
                    markup=False,
                )
            sys.exit(130)
        except TrainingDiverged as exc:
            if rank0:
                fail(str(exc), code=1)
            sys.exit(1)
        if not rank0:
            return
        if json:
            print_json_line(summary)
        else:
            console.print(
                "[bold]done[/bold] "
                + escape(
                    f"{summary['model']} ({summary['method']}) on {summary['data']}: best top1 {summary['best_top1']:.2f}% "
                    f"(epoch {summary['best_epoch'] + 1}), last {summary['last_top1']:.2f}%, {human(summary['params'])} params, "
                    f"{human(summary['macs'])} MACs, {summary['wall_seconds']:.1f}s; results in {directory}"
                ),
                highlight=False,
            )


def print_json_line(data: dict[str, Any]) -> None:
    sys.stdout.write(json_text(data) + "\n")
    sys.stdout.flush()


def _flags(given: dict[str, Any]) -> list[str]:
    """The explicitly given options, as flags again (for the torchrun children)."""
    out: list[str] = []
    for key, value in given.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            out.append(flag if value else f"--no-{key.replace('_', '-')}")
        else:
            out += [flag, str(value)]
    return out


def _launch(nproc: int, argv: list[str], directory: Path) -> int:
    from ..train.distributed import launch
    from ._common import debug_enabled

    return launch(nproc, argv, directory=directory, debug=debug_enabled())


def _convert_recipe(rec: Any, directory: Path, *, force: bool, under_torchrun: bool, trust_code: bool) -> None:
    """Convert the recipe's model into DIR (rank 0 only under torchrun; the others wait)."""
    from ..convert.api import convert
    from ..io import save
    from ..models import check_file_model

    # a recipe is a file: its factory is code, imported only on consent
    check_file_model(
        rec.model,
        where=rec.source,
        trust_code=trust_code,
        instead=(
            "convert the model yourself (lowrank convert MODULE:FACTORY -o DIR, then lowrank train DIR) or, "
            "if you trust this file, --trust-code"
        ),
    )
    if directory.exists() and not force:
        raise LowRankError(
            f"{directory} already exists; continue its run with --resume, replace it with --force, or pass -o NEW_DIR"
        )
    if under_torchrun:
        raise LowRankError(
            "under torchrun, convert first (lowrank convert ... -o DIR) and run `lowrank train DIR`; or use --nproc, which does both"
        )
    model = convert(rec.model, num_classes=rec.num_classes, dense=rec.dense, **rec.convert)
    save(model, directory, overwrite=force)


@contextlib.contextmanager
def _removed_unless_started(directory: Path) -> Iterator[None]:
    """Remove the artifact this command converted if the run fails before its first training state is saved."""
    from ..artifact import STATE_FILE, DirectoryLock

    try:
        yield
    except BaseException:
        try:
            with DirectoryLock(directory, what="removed"):  # not if another run has started training it meanwhile
                if not (directory / STATE_FILE).exists():
                    shutil.rmtree(directory, ignore_errors=True)
        except LowRankError:
            pass  # it is the other run's now
        raise
