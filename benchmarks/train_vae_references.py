"""Train chapter 12's reference VAEs to convergence with the chapter's own loop, once, and ship them small.

    python benchmarks/train_vae_references.py --select           # candidates, briefly, on the validation split
    python benchmarks/train_vae_references.py                    # every VAE reference not yet in the manifest
    python benchmarks/train_vae_references.py --only cifar10-vae # one (retrains it)
    python benchmarks/train_vae_references.py --report           # the README table from the manifest

The model is chapter 12's `VAE` (chapter 01's encoder and decoder around a Gaussian code) and the
training step is chapter 12's `train_epoch_vae`, imported from the module the notebook saves: the
reference is what a learner's code reaches with the whole training split and more epochs. Each
reference trains on the training split less the course's validation split (5,000 images), with Adam
and a cosine learning-rate decay over the epochs; after every epoch the validation split is scored
(negative ELBO in bits per dimension, sigma chosen on the same split, which is one number), and the
best epoch is kept. Candidates (width, code values, beta) are compared the same way by ``--select``
(rows in results/vae_selection.jsonl). beta < 1 with chapter 12's fixed sigma = 0.1 is the ELBO of a
Gaussian with a smaller sigma (0.1 * sqrt(beta)), up to a constant factor: chapter 12's exercise 12.4.

The weights are stored in half precision in ``course_utils/pretrained/<name>.pt``, with a manifest
row (``"model": "VAE"``) that records how they were made and the test scores *of the stored weights*
on the whole test split; `cu.load_pretrained(name, build=VAE)` loads them. Training resumes from
``--work`` after an interruption.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import math
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import _common
import course_utils as cu
import train_references as refs
from course_utils import pretrained as pt
from course_utils.chapters.ch01_feature_extractors import image_loader
from course_utils.chapters.ch12_vae import VAE, score_bits_per_dim, train_epoch_vae

HERE = Path(__file__).resolve().parent
SELECTION = HERE / "results" / "vae_selection.jsonl"
MODULE = "course_utils.chapters.ch12_vae"
RETRAIN = "python benchmarks/train_vae_references.py --only {name}"
RECIPE = {"optimizer": "adam", "lr": 2e-3, "schedule": "cosine", "batch_size": 64}  # chapter 12's Adam, lr, batch
CHECK_IMAGES = refs.CHECK_IMAGES  # test images whose posterior-mean reconstruction MSE the tests re-score

# What each reference is, chosen on the validation split by --select (results/vae_selection.jsonl).
VAE_REFERENCES: dict[str, dict] = {
    "fashion-mnist-vae": {"dataset": "fashion-mnist", "width": 32, "code_channels": 8, "latent": 64, "beta": 0.25,
                          "epochs": 40},
    "cifar10-vae": {"dataset": "cifar10", "width": 32, "code_channels": 8, "latent": 128, "beta": 0.25,
                    "epochs": 30},
}
CANDIDATES = {  # dataset => (width, code channels, latent, beta): chapter 12's own model first
    "fashion-mnist": [(16, 4, 16, 1.0), (32, 8, 32, 1.0), (32, 8, 32, 0.25), (32, 8, 64, 0.25)],
    "cifar10": [(16, 4, 64, 1.0), (32, 8, 128, 1.0), (32, 8, 128, 0.25)],
}


def architecture(image_shape, width: int, code_channels: int, latent: int) -> dict:
    """Return the VAE's constructor arguments, as the manifest records them."""
    return {"image_shape": list(image_shape), "latent": latent, "width": width, "code_channels": code_channels}


def validation_bits(model: VAE, val: cu.ImageData) -> float:
    """Return the validation split's negative ELBO in bits per dimension (sigma chosen on the same split)."""
    return score_bits_per_dim(model, val.images, val.images)["bits/dim"]


def train_vae(label: str, arch: dict, beta: float, data: tuple, epochs: int, checkpoint: Path | None = None
              ) -> tuple[VAE, list[float], float]:
    """Train a VAE with chapter 12's loop; return (the best epoch's model, validation bits/dim by epoch, seconds)."""
    train, val = data
    torch.manual_seed(0)
    model = VAE(**arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=RECIPE["lr"])
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    loader = image_loader(train.images, RECIPE["batch_size"], shuffle=True, seed=0)
    state = {"epoch": 0, "by_epoch": [], "seconds": 0.0, "best": None}
    best = copy.deepcopy(model)
    if checkpoint is not None and checkpoint.exists():  # resume after an interruption
        state = cu.load_checkpoint(checkpoint, model, optimizer, schedule)["config"]
        cu.load_checkpoint(checkpoint.with_suffix(".best"), best)
        torch.manual_seed(1000 + state["epoch"])
    for epoch in tqdm(range(state["epoch"], epochs), desc=label, unit="epoch", initial=state["epoch"], total=epochs):
        t0 = time.perf_counter()
        train_epoch_vae(model, loader, optimizer, beta=beta, step=epoch * len(loader))
        schedule.step()
        state["seconds"] += time.perf_counter() - t0
        state["by_epoch"].append(round(validation_bits(model, val), 4))
        state["epoch"] = epoch + 1
        if state["best"] is None or state["by_epoch"][-1] < state["by_epoch"][state["best"]]:
            state["best"] = epoch
            best.load_state_dict(model.state_dict())
        if checkpoint is not None:
            cu.save_checkpoint(checkpoint.with_suffix(".best"), best)
            cu.save_checkpoint(checkpoint, model, optimizer, schedule, config=state)
        torch.manual_seed(1000 + state["epoch"])  # the same draws whether or not the run was resumed
    return best.eval(), state["by_epoch"], state["seconds"]


def select(dataset: str, epochs: int) -> list[dict]:
    """Train each candidate for ``epochs`` on the same images; return their validation scores."""
    train, val, _ = refs.splits(dataset)
    rows = []
    for width, code_channels, latent, beta in CANDIDATES[dataset]:
        arch = architecture(train.image_shape, width, code_channels, latent)
        label = f"{dataset} width {width}, {latent} values, beta {beta}"
        model, by_epoch, seconds = train_vae(label, arch, beta, (train, val), epochs)
        rows.append({"dataset": dataset, "architecture": arch, "beta": beta, "epochs": epochs,
                     "split": "validation", "val_bits_per_dim": min(by_epoch), "by_epoch": by_epoch,
                     "parameters": cu.count_parameters(model), "seconds": round(seconds, 1),
                     "machine": _common.machine_line(stamp=True)})
        print(json.dumps({k: rows[-1][k] for k in ("dataset", "architecture", "beta", "val_bits_per_dim")}))
    return rows


def reconstruction_mse(model: VAE, images: torch.Tensor) -> float:
    """Return the MSE per value of decoding each image's posterior mean (no draw: deterministic)."""
    total = 0.0
    with torch.no_grad():
        for (x,) in image_loader(images, 500):
            total += torch.nn.functional.mse_loss(model.decode(model.encode(x)), x, reduction="sum").item()
    return total / images.numel()


def train_reference(name: str, spec: dict, work: Path, command: str, replace: bool = False,
                    train_images: int | None = None) -> dict | None:
    """Train one VAE reference (resuming from ``work``), store its half-precision weights, return its manifest row."""
    train, val, test = refs.splits(spec["dataset"])
    train = train.subset(train_images)  # all of them unless trying the script out
    arch = architecture(train.image_shape, spec["width"], spec["code_channels"], spec["latent"])
    work.mkdir(parents=True, exist_ok=True)
    model, by_epoch, seconds = train_vae(name, arch, spec["beta"], (train, val), spec["epochs"],
                                         checkpoint=work / f"{name}.ckpt")
    path = pt.PRETRAINED_DIR / f"{name}.pt"
    shipped = VAE(**arch)  # the weights as the file stores them (float16 parameters), what a learner loads
    shipped.load_state_dict(pt.half_precision_state(model))
    shipped = shipped.float().eval()
    val_bits = validation_bits(shipped, val)
    if name in pt.pretrained_names() and not replace and val_bits > pt.pretrained_info(name)["val_bits_per_dim"]:
        print(f"{name}: validation {val_bits:.4f} bits/dim is worse than the shipped reference's; kept the shipped one")
        return None
    digest = pt.save_reference(model, path)
    scores = score_bits_per_dim(shipped, val.images, test.images)
    mse = reconstruction_mse(shipped, test.images)
    return {
        "name": name, "model": "VAE", "module": MODULE, "retrain": RETRAIN, "file": path.name, "sha256": digest,
        "bytes": path.stat().st_size, "dataset": spec["dataset"], "code_size": spec["latent"], "architecture": arch,
        "parameters": cu.count_parameters(shipped), "beta": spec["beta"], "recipe": RECIPE,
        "epochs": by_epoch.index(min(by_epoch)) + 1, "epochs_trained": len(by_epoch),
        "val_bits_per_dim_by_epoch": by_epoch,
        "train_images": len(train), "validation_images": len(val), "test_images": len(test),
        "wall_seconds": round(seconds, 1), "images_per_second": round(len(train) * len(by_epoch) / seconds, 1),
        "val_bits_per_dim": round(val_bits, 4), "test_bits_per_dim": round(scores["bits/dim"], 4),
        "test_negative_elbo_nats": round(scores["negative ELBO (nats)"], 2), "test_kl_nats": round(scores["KL (nats)"], 2),
        "test_sigma": round(scores["sigma (validation)"], 5),
        "test_mse": round(mse, 6), "test_psnr": round(10 * math.log10(1 / mse), 3),
        "check_images": CHECK_IMAGES, "check_mse": reconstruction_mse(shipped, test.subset(CHECK_IMAGES).images),
        "weights": "float16 (scores are of these stored weights)", "device": "cpu",
        "machine": _common.machine_line(), "torch": torch.__version__, "date": f"{dt.date.today()}", "command": command,
    }


def report() -> str:
    """Return the README's table of the VAE references, from the manifest."""
    lines = ["| reference | width, code values, beta | parameters | best epoch of | wall time | images/s | "
             "validation bits/dim | test bits/dim | test KL (nats) | test MSE (posterior mean) | file |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in (pt.pretrained_info(n) for n in pt.pretrained_names("VAE")):
        arch = r["architecture"]
        lines.append(f"| `{r['name']}` | {arch['width']}, {arch['latent']}, {r['beta']} | {r['parameters']:,} | "
                     f"{r['epochs']} of {r['epochs_trained']} | {refs.wall_time(r)} | {r['images_per_second']:,.0f} | "
                     f"{r['val_bits_per_dim']:.3f} | {r['test_bits_per_dim']:.3f} | {r['test_kl_nats']:.1f} | "
                     f"{r['test_mse']:.5f} | {r['bytes'] / 1e6:.2f} MB |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=sorted(VAE_REFERENCES), help="train these (again)")
    parser.add_argument("--replace", action="store_true", help="replace the shipped ones even if worse on validation")
    parser.add_argument("--select", nargs="+", choices=sorted(CANDIDATES), help="compare candidates on validation")
    parser.add_argument("--select-epochs", type=int, default=3)
    refs.add_training_options(parser)
    args = refs.parse_training_options(parser, report)
    if args is None:
        return 0
    if args.select:
        for dataset in args.select:
            rows = select(dataset, args.select_epochs)
            with open(SELECTION, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
        return 0
    command = _common.command_line("train_vae_references.py", sys.argv[1:])
    for name in args.only or [n for n in VAE_REFERENCES if n not in pt.pretrained_names()]:
        spec = dict(VAE_REFERENCES[name], **({"epochs": args.epochs} if args.epochs else {}))
        row = train_reference(name, spec, args.work, command, args.replace, args.train_images)
        if row is not None:
            refs.add_to_manifest(row)
            print(json.dumps({k: row[k] for k in ("name", "epochs", "wall_seconds", "val_bits_per_dim",
                                                  "test_bits_per_dim", "test_mse")}))
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
