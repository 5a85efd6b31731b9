"""Kill a training run with SIGKILL mid-epoch, resume it, and get the uninterrupted run's loss curve."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import torch

import course_utils as cu

# Each run is a fresh process, as a learner's would be: train (resuming if a checkpoint exists),
# then write the step losses as JSON.
CHILD = textwrap.dedent("""
    import json, sys, torch, course_utils as cu
    torch.set_num_threads(1)
    data = cu.read_pack(sys.argv[1])
    torch.manual_seed(0)
    model = cu.ConvAutoencoder(28, 1, (16, 32), latent=32)
    history = cu.fit(model, data, epochs=6, batch_size=64, seed=4, checkpoint=sys.argv[2],
                     checkpoint_every=3, resume=True, progress=False)
    json.dump({"step_losses": history.step_losses, "train_loss": history["train_loss"]}, open(sys.argv[3], "w"))
""")
EPOCHS, STEPS_PER_EPOCH = 6, 2048 // 64


def _train(pack, ckpt, out) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CHILD, str(pack), str(ckpt), str(out)])


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path, fashion_test):
    part = fashion_test.subset(2048, seed=2)
    pack = cu.write_pack(tmp_path / "part.npz", part.images.permute(0, 2, 3, 1).numpy(), part.labels.numpy(),
                         part.classes)
    ckpt = tmp_path / "run.pt"
    child = _train(pack, ckpt, tmp_path / "killed.json")
    loads, killed_at = 0, None
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and child.poll() is None:
            if ckpt.exists():
                state = torch.load(ckpt, weights_only=True)  # never half-written: always loads
                loads += 1
                if state["step"] >= STEPS_PER_EPOCH + 6:
                    os.kill(child.pid, signal.SIGKILL)
                    killed_at = state["step"]
                    break
            time.sleep(0.005)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert killed_at is not None, "the child finished or stalled before it could be killed"
    assert child.returncode == -signal.SIGKILL and loads > 0
    assert not (tmp_path / "killed.json").exists()

    state = torch.load(ckpt, weights_only=True)  # the file the killed run left behind
    assert STEPS_PER_EPOCH < state["step"] < EPOCHS * STEPS_PER_EPOCH
    assert state["step"] % 3 == 0 or state["batch"] == 0  # a complete save, every 3 steps or at an epoch end
    assert len(state["history"]["step_losses"]) == state["step"]

    resume = _train(pack, ckpt, tmp_path / "resumed.json")
    reference = _train(pack, tmp_path / "reference.pt", tmp_path / "reference.json")
    assert resume.wait(timeout=180) == 0 and reference.wait(timeout=180) == 0
    resumed = json.loads((tmp_path / "resumed.json").read_text())
    uninterrupted = json.loads((tmp_path / "reference.json").read_text())
    assert len(resumed["step_losses"]) == EPOCHS * STEPS_PER_EPOCH
    # Same batch order, same optimizer/scheduler/RNG state, one CPU thread in every run: the resumed
    # curve is the uninterrupted one, bit for bit.
    assert resumed["step_losses"] == uninterrupted["step_losses"]
    assert resumed["train_loss"] == uninterrupted["train_loss"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
