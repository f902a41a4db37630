"""`iounet data synth`, `train`, `train-detector` and `detect`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the training subcommands to the `iounet` parser."""
    data = subparsers.add_parser("data", help="data sets")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = actions.add_parser("synth", help="generate the synthetic detection benchmark")
    add_output_arguments(synth, "folder to create")
    synth.add_argument("--train", type=int, default=400, help="training images")
    synth.add_argument("--val", type=int, default=100, help="validation images")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(run=_synth)

    train = subparsers.add_parser(
        "train", help="train the IoU predictor, or the joint IoU-Net detector"
    )
    _training_arguments(train, "paper, cpu-demo, joint-paper, joint-cpu-demo, fpn-*, iou-branch-*")
    train.add_argument("--weights", type=Path, help="local ImageNet weights of the ResNet body")
    train.add_argument(
        "--from",
        dest="detector_from",
        type=Path,
        help="joint or FPN checkpoint whose IoU branch an iou-branch-* recipe trains (frozen)",
    )
    train.add_argument(
        "--backbone-from", type=Path, help="detector checkpoint whose FPN backbone to start from"
    )
    train.set_defaults(run=_train)

    detector = subparsers.add_parser("train-detector", help="train the Faster R-CNN detector")
    _training_arguments(detector, "detector-cpu-demo")
    detector.set_defaults(run=_train_detector, weights=None, backbone_from=None, detector_from=None)

    detect = subparsers.add_parser("detect", help="write a detector's raw (pre-NMS) detections")
    detect.add_argument("--checkpoint", type=Path, required=True, help="detector checkpoint")
    detect.add_argument("--images", type=Path, required=True)
    detect.add_argument("--annotations", type=Path, required=True, help="COCO file of the images")
    add_output_arguments(detect, "COCO results JSON to write")
    detect.add_argument("--device", default="cpu")
    detect.set_defaults(run=_detect)


def add_output_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--out`` (required; `what` is its help) and ``--force`` (replace an existing --out)."""
    parser.add_argument("--out", type=Path, required=True, help=what)
    parser.add_argument("--force", action="store_true", help="replace an existing --out")


def _training_arguments(parser: argparse.ArgumentParser, recipes: str) -> None:
    parser.add_argument("--data", type=Path, required=True, help="folder with train/ (COCO format)")
    parser.add_argument("--out", type=Path, required=True, help="folder for checkpoints")
    parser.add_argument("--config", type=Path, help="TOML file of overrides")
    parser.add_argument("--recipe", help=f"{recipes} (default: the config's)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    parser.add_argument("--seed", type=int, help="seed of the run (default: the config's)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    parser.add_argument("--no-progress", action="store_true")


def _synth(args: argparse.Namespace) -> int:
    from iounet.training.synthetic import generate_synthetic_dataset

    summary = generate_synthetic_dataset(
        args.out, train=args.train, val=args.val, size=args.size, seed=args.seed, force=args.force
    )
    print(json.dumps(summary, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    return _run_training(args, None, default_recipe=None)


def _train_detector(args: argparse.Namespace) -> int:
    from iounet.training.detector import DetectorTrainer

    return _run_training(args, DetectorTrainer, default_recipe="detector-cpu-demo")


def _run_training(
    args: argparse.Namespace, trainer_class: type | None, default_recipe: str | None
) -> int:
    """Train with `trainer_class` (None: the trainer of the config's kind)."""
    from dataclasses import replace

    from iounet.devices import check_device
    from iounet.training.checkpoint import LAST_NAME
    from iounet.training.config import load_config

    check_device(args.device)
    last = args.out / LAST_NAME
    if last.exists() and not args.resume:
        raise FileExistsError(
            f"{last} exists: pass --resume to continue it, or choose another --out"
        )
    if args.resume and not last.is_file():
        raise FileNotFoundError(f"--resume: {last} not found (nothing to continue)")
    config = load_config(args.config, args.recipe or (None if args.config else default_recipe))
    if args.detector_from:
        if config.kind != "iou-branch":
            raise ValueError(f"--from is for iou-branch-* recipes, not kind {config.kind!r}")
        config = replace(config, detector_from=str(args.detector_from))
    if trainer_class is None:
        if config.kind == "joint":
            from iounet.training.joint_trainer import JointTrainer as trainer_class
        elif config.kind == "iou-branch":
            from iounet.training.iou_branch_trainer import IoUBranchTrainer as trainer_class
        else:
            from iounet.training.trainer import Trainer as trainer_class
    if args.seed is not None:
        config = replace(config, seed=args.seed)
    if args.backbone_from:
        config = replace(config, backbone_from=str(args.backbone_from))
    trainer = trainer_class(args.data, args.out, config, weights=args.weights, device=args.device)
    if args.resume:
        trainer.resume()
    try:
        result = trainer.run(progress=not args.no_progress)
    except KeyboardInterrupt:
        saved = trainer.last_checkpoint
        kept = f"the last checkpoint is {saved}" if saved.is_file() else "no checkpoint written"
        print(f"iounet {args.command}: interrupted at step {trainer.step}; {kept}", file=sys.stderr)
        return 130
    except FloatingPointError as error:
        print(f"iounet {args.command}: {error}", file=sys.stderr)
        return 1
    print(
        f"step {result.step}: recent loss {result.recent_loss:.4f}; checkpoint {result.checkpoint}"
    )
    return 0


def _detect(args: argparse.Namespace) -> int:
    from iounet.devices import check_device
    from iounet.files import check_output, is_coco_results, write_json

    check_device(args.device)
    output = check_output(args.out, args.force, is_coco_results, "COCO results file")

    from iounet.training.coco_dataset import dataset_for_checkpoint
    from iounet.training.detector import detect, load_detector

    model, state = load_detector(args.checkpoint, args.device)
    dataset = dataset_for_checkpoint(args.images, args.annotations, state, args.checkpoint)
    results = []
    for index in range(len(dataset)):
        image, target = dataset[index]
        found = detect(model, [image])[0]
        boxes = found["boxes"] / float(target["scale"])
        for box, score, label in zip(
            boxes.tolist(), found["scores"].tolist(), found["labels"].tolist(), strict=True
        ):
            results.append(
                {
                    "image_id": int(target["image_id"]),
                    "category_id": dataset.label_to_category[label],
                    "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "score": score,
                }
            )
    write_json(output, results)
    print(f"{len(results)} raw detections on {len(dataset)} images -> {args.out}")
    return 0
