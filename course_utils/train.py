"""Train an autoencoder from the command line, alone or data-parallel under torchrun.

    python -m course_utils.train --dataset fashion-mnist --latent 196 --epochs 2
    torchrun --standalone --nproc-per-node=2 -m course_utils.train --dataset fashion-mnist --latent 196 --epochs 2

Both run the same `fit` (and so the same `TrainStep`). Under torchrun every process loads the
data and builds the model; fit joins the run (NCCL on GPUs, gloo on the CPU), ``--batch-size``
is the global batch, and rank 0 alone prints progress, writes ``--checkpoint`` and ``--report``.
``--resume`` continues from rank 0's last checkpoint, with any number of processes.
``python -m course_utils.train --help`` lists every option.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from torch.distributed.elastic.multiprocessing.errors import record

from .data import ImageData, load_dataset, read_pack
from .engine import finish_data_parallel, join_data_parallel
from .environment import get_profile, seed_everything
from .errors import CourseError
from .files import atomic_write
from .metrics import evaluate
from .models import RECOMMENDED_TRAINING, ConvAutoencoder, recommended_autoencoder
from .replicas import (AnothertechsAutoencoder, GeeksforGeeksAutoencoder, KapilshAutoencoder, PaperspaceAutoencoder,
                       UvATutorial9Autoencoder)
from .training import Recipe, fit, sharded_loader

MODELS = {"recommended": "the course's recommended autoencoder (--latent, --bottleneck)",
          "plain": "ConvAutoencoder without batch norm, widths 32 and 64 (--latent)",
          "paperspace": "Paperspace's CIFAR-10 model (--latent 200 or 1000)", "kapilsh": "kapilsh's model",
          "geeksforgeeks": "GeeksforGeeks' model", "anothertechs": "anothertechs' model",
          "uva": "UvA tutorial 9's model (--latent)"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Return the command line's options."""
    rec, default = RECOMMENDED_TRAINING, " (default: %(default)s)"
    p = argparse.ArgumentParser(prog="python -m course_utils.train", description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="fashion-mnist", help="a dataset the course knows (fashion-mnist, cifar10, "
                   "stl10, flowers102) or a pack (.npz)" + default)
    p.add_argument("--image-size", type=int, default=None, help="resize the images to this side")
    p.add_argument("--train-images", type=int, default=None,
                   help="how many training images (default: the profile's share of the split)")
    p.add_argument("--profile", default=None,
                   help="smoke, laptop or gpu (default: $COURSE_PROFILE, else chosen by the hardware)")
    p.add_argument("--model", default="recommended", choices=sorted(MODELS),
                   help="; ".join(f"{k}: {v}" for k, v in MODELS.items()) + default)
    p.add_argument("--latent", type=int, default=196, help="code size" + default)
    p.add_argument("--bottleneck", default="flat", choices=["flat", "spatial"], help="the code's shape" + default)
    p.add_argument("--epochs", type=int, default=None, help="(default: the profile's)")
    p.add_argument("--batch-size", type=int, default=rec["batch_size"],
                   help="the global batch, split evenly over the processes" + default)
    p.add_argument("--lr", type=float, default=rec["lr"], help="peak learning rate" + default)
    p.add_argument("--weight-decay", type=float, default=rec["weight_decay"], help=default.strip())
    p.add_argument("--optimizer", default=rec["optimizer"], help="adamw, adam or sgd" + default)
    p.add_argument("--schedule", default=rec["schedule"], help="onecycle, cosine or none" + default)
    p.add_argument("--amp", default="auto", help="mixed precision: auto, bf16, fp16 or none" + default)
    p.add_argument("--device", default=None, help="cuda or cpu (default: the best one here)")
    p.add_argument("--seed", type=int, default=0, help="the batch order's seed, and the model's" + default)
    p.add_argument("--loader", default="resident", choices=["resident", "dataloader"],
                   help="resident: uint8 images kept on the device; dataloader: a DataLoader with a "
                        "DistributedSampler, workers and pinned memory, for data that does not fit there" + default)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers per training process" + default)
    p.add_argument("--checkpoint", default=None, help="where rank 0 saves the run (atomically)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help="also save every N steps (default: at each epoch's end only)")
    p.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    p.add_argument("--stop-after-steps", type=int, default=None, help="stop early, as an interruption would")
    p.add_argument("--test", action="store_true", help="score the trained model on the test split (rank 0)")
    p.add_argument("--report", default=None, help="where rank 0 writes a JSON report of the run")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def load_training_images(args: argparse.Namespace) -> ImageData:
    """Return the training images the options ask for: a named dataset's split, or a pack."""
    if args.dataset.endswith(".npz"):
        data = read_pack(args.dataset)
        return data.subset(args.train_images) if args.train_images else data
    data = load_dataset(args.dataset, "train", image_size=args.image_size,
                        profile=None if args.train_images else get_profile(args.profile))
    return data.subset(args.train_images)


def build_model(name: str, image_shape: tuple[int, int, int], latent: int, bottleneck: str) -> torch.nn.Module:
    """Return a fresh model ``name`` (see MODELS) for images of ``image_shape``."""
    channels, size, _ = image_shape
    builders = {
        "recommended": lambda: recommended_autoencoder(image_shape, latent, bottleneck),
        "plain": lambda: ConvAutoencoder(size, channels, (32, 64), latent=latent, bottleneck=bottleneck),
        "paperspace": lambda: PaperspaceAutoencoder(latent), "kapilsh": KapilshAutoencoder,
        "geeksforgeeks": GeeksforGeeksAutoencoder, "anothertechs": AnothertechsAutoencoder,
        "uva": lambda: UvATutorial9Autoencoder(latent)}
    return builders[name]()


@record  # under torchrun, a failing rank's traceback goes into torchrun's failure report
def main(argv: list[str] | None = None) -> dict:
    """Train as the command line says; return (and with --report, write) rank 0's report."""
    started = time.perf_counter()
    args = parse_args(argv)
    dp = join_data_parallel(args.device)
    profile = get_profile(args.profile)
    if args.test and args.dataset.endswith(".npz"):
        raise CourseError("--test scores on a named dataset's test split; with a pack, leave --test out.")
    train = load_training_images(args)
    seed_everything(args.seed)
    model = build_model(args.model, train.image_shape, args.latent, args.bottleneck)
    data = train if args.loader == "resident" else sharded_loader(train, args.batch_size, workers=args.workers,
                                                                   seed=args.seed, device=dp.device)
    ready = time.perf_counter()
    recipe = Recipe(epochs=args.epochs or profile.epochs, batch_size=args.batch_size, lr=args.lr,
                    optimizer=args.optimizer, weight_decay=args.weight_decay,
                    schedule=None if args.schedule == "none" else args.schedule, amp=args.amp, seed=args.seed)
    history = fit(model, data, None, recipe, device=dp.device, checkpoint=args.checkpoint,
                  checkpoint_every=args.checkpoint_every,
                  resume=args.resume, stop_after_steps=args.stop_after_steps, progress=not args.quiet,
                  desc=f"{args.model} x{dp.world_size} process(es)")
    report = {"processes": dp.world_size, "backend": dp.backend, "device": str(dp.device),
              "threads_per_process": torch.get_num_threads(), "batch_size": args.batch_size,
              "batch_per_process": args.batch_size // dp.world_size, "images": len(train),
              "loader": args.loader, "model": args.model, "records": history.records,
              "step_losses": history.step_losses, "startup_seconds": ready - started,
              "fit_seconds": time.perf_counter() - ready}
    if args.test and dp.is_main:
        test = load_dataset(args.dataset, "test", image_size=args.image_size, profile=profile)
        report["test"] = {k: v for k, v in evaluate(model, test, device=dp.device, ssim=False).items()
                          if isinstance(v, float)}
    if dp.is_main and args.report:
        with atomic_write(Path(args.report)) as f:
            f.write(json.dumps(report, indent=1).encode())
    return report


if __name__ == "__main__":
    main()
    finish_data_parallel()  # under torchrun: every rank leaves together, and without a crash at exit (see there)
