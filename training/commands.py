"""`iounet data synth`, `iounet train` and `iounet eval` (the predictor's Pearson figures)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the training subcommands to the `iounet` parser."""
    data = subparsers.add_parser("data", help="data sets")
    actions = data.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    synth = actions.add_parser("synth", help="generate the synthetic detection benchmark")
    synth.add_argument("--out", type=Path, required=True, help="folder to create")
    synth.add_argument("--train", type=int, default=400, help="training images")
    synth.add_argument("--val", type=int, default=100, help="validation images")
    synth.add_argument("--size", type=int, default=256, help="image side in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--force", action="store_true", help="replace an existing --out")
    synth.set_defaults(run=_synth)

    train = subparsers.add_parser("train", help="train the IoU predictor")
    train.add_argument("--data", type=Path, required=True, help="folder with train/ (COCO format)")
    train.add_argument("--out", type=Path, required=True, help="folder for checkpoints")
    train.add_argument("--config", type=Path, help="TOML file of overrides")
    train.add_argument("--recipe", help="paper or cpu-demo (default: the config's, else paper)")
    train.add_argument("--resume", action="store_true", help="continue from --out/last.pt")
    train.add_argument("--weights", type=Path, help="local ImageNet weights of the ResNet body")
    train.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if present)")
    train.add_argument("--no-progress", action="store_true")
    train.set_defaults(run=_train)

    evaluate = subparsers.add_parser("eval", help="evaluate the IoU predictor")
    evaluate.add_argument("--images", type=Path, required=True)
    evaluate.add_argument("--annotations", type=Path, required=True)
    evaluate.add_argument("--checkpoint", type=Path, required=True)
    evaluate.add_argument("--detections", type=Path, help="COCO results of a detector")
    evaluate.add_argument("--json", type=Path, help="write the figures here")
    evaluate.add_argument("--plots", type=Path, help="folder for scatter plots")
    evaluate.add_argument("--max-images", type=int)
    evaluate.add_argument("--device", default="cpu")
    evaluate.set_defaults(run=_eval)


def _synth(args: argparse.Namespace) -> int:
    from iounet.training.synthetic import generate_synthetic_dataset

    summary = generate_synthetic_dataset(
        args.out, train=args.train, val=args.val, size=args.size, seed=args.seed, force=args.force
    )
    print(json.dumps(summary, indent=2))
    return 0


def _train(args: argparse.Namespace) -> int:
    from iounet.training.checkpoint import LAST_NAME
    from iounet.training.config import load_config
    from iounet.training.trainer import Trainer

    config = load_config(args.config, args.recipe)
    if (args.out / LAST_NAME).exists() and not args.resume:
        raise SystemExit(
            f"{args.out / LAST_NAME} exists: pass --resume to continue it, or choose another --out"
        )
    trainer = Trainer(args.data, args.out, config, weights=args.weights, device=args.device)
    if args.resume:
        trainer.resume()
    try:
        result = trainer.run(progress=not args.no_progress)
    except KeyboardInterrupt:
        print(
            f"interrupted at step {trainer.step}; the last checkpoint is {trainer.last_checkpoint}"
        )
        return 130
    print(
        f"step {result.step}: recent loss {result.recent_loss:.4f}; checkpoint {result.checkpoint}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from iounet.files import atomic_path
    from iounet.training.checkpoint import load_model
    from iounet.training.coco_dataset import CocoDetection
    from iounet.training.config import TrainConfig
    from iounet.training.evaluation import evaluate_detections, evaluate_jittered, scatter_plot

    model, state = load_model(args.checkpoint, args.device)
    config = TrainConfig.from_dict(state["config"])
    dataset = CocoDetection(
        args.images, args.annotations, min_size=config.data.min_size, max_size=config.data.max_size
    )
    if list(dataset.class_names) != state["class_names"]:
        raise SystemExit(
            f"{args.annotations} has classes {list(dataset.class_names)}, "
            f"the checkpoint {state['class_names']}"
        )
    report: dict = {}
    jittered = evaluate_jittered(model, dataset, max_images=args.max_images)
    report["pearson"] = {
        "jittered_predicted_iou": jittered.pearson,
        "jittered_boxes": len(jittered.true),
    }
    print(
        f"jittered boxes: {len(jittered.true)}, Pearson(predicted, true IoU) {jittered.pearson:.3f}"
    )
    if args.plots:
        scatter_plot(args.plots / "pearson_jittered.png", jittered, "held-out jittered boxes")
    if args.detections:
        detections = json.loads(Path(args.detections).read_text())
        detected = evaluate_detections(model, dataset, detections)
        report["pearson"].update(
            predicted_iou=detected.pearson,
            classification=detected.score_pearson,
            detection_boxes=len(detected.true),
        )
        print(
            f"detections with IoU > 0.5: {len(detected.true)}, Pearson predicted IoU "
            f"{detected.pearson:.3f}, classification confidence {detected.score_pearson:.3f}"
        )
        if args.plots:
            scatter_plot(
                args.plots / "pearson_detections.png", detected, "detector boxes, IoU > 0.5"
            )
    if args.json:
        with atomic_path(args.json) as temporary:
            temporary.write_text(json.dumps(report, indent=2) + "\n")
    return 0
