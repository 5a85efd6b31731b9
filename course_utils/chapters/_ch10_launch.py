"""Chapter 10's hand-written helpers: launch training on N processes, and what an all-reduce computes and costs.

The data-parallel lines themselves (the process group, the sampler, the ``DistributedDataParallel`` wrap,
``scaled_lr``) are written in the notebook and saved to ``ch10_distributed``. This module holds the plumbing
around them: `spawn_workers` starts a worker function the learner wrote on N processes of this machine;
`run_torchrun`/`torchrun_train` start ``course_utils.train`` (or any script) with torchrun from a notebook and
report the first failing rank's error; `all_reduce_demo` measures what an all-reduce computes and what it costs.
Its name does not start with ``ch10_`` because ``tools/save_cells.py`` writes the chapter's saved cells into
its one ``chNN_*.py`` module.
"""
from __future__ import annotations

import io
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..engine import finish_data_parallel
from ..errors import CourseError


# --------------------------------------------------------------------------- launching with torchrun
def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (for rank 0 to listen on)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def torchrun_command(args: list[str], processes: int, *, module: str | None = "course_utils.train",
                     script: str | Path | None = None, port: int | None = None) -> list[str]:
    """Return the torchrun command line that starts ``processes`` copies of ``module`` (or ``script``) with ``args``."""
    if processes < 1:
        raise CourseError(f"processes must be at least 1, got {processes}.")
    target = [str(script)] if script is not None else ["-m", module]
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc-per-node={processes}",
            "--master-addr=127.0.0.1", f"--master-port={port or free_port()}", *target, *map(str, args)]


def _readable(command: list[str], width: int = 100) -> str:
    """Return ``command`` as a learner would type it (torchrun ..., without this Python's full path).

    Lines longer than ``width`` characters continue on the next one after a backslash, as in a shell.
    """
    words = command[3:] if command[1:3] == ["-m", "torch.distributed.run"] else command
    lines, line = [], "torchrun"
    for word in map(shlex.quote, words):
        if len(line) + 1 + len(word) > width - 2:
            lines.append(line + " \\")
            line = "    " + word
        else:
            line += " " + word
    return "\n".join([*lines, line])


_EXCEPTION = re.compile(r"^\s*((?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Interrupt)\b.*)$")


def _exception_line(lines: list[str]) -> str | None:
    """Return the last 'SomeError: message' line of ``lines`` (a traceback's last line), if any."""
    found = [m.group(1).strip() for m in map(_EXCEPTION.match, lines) if m and "ChildFailedError" not in m.group(1)]
    return found[-1] if found else None


def _failure(output: str, returncode: int, processes: int, with_traceback: bool = False) -> str:
    """Return a message naming the rank that failed first and what happened to it, read from torchrun's output.

    torchrun ends a failed run with a report whose "Root Cause" names the first rank to fail; that
    rank's own traceback is in the output, each line prefixed with ``[rankN]:`` (or, for a script
    decorated with ``@record``, inside the report itself). A rank killed by a signal left no
    traceback: the message says the process crashed and shows the last lines the run printed.
    """
    root = output.split("Root Cause", 1)[1] if "Root Cause" in output else ""
    rank = re.search(r"rank\s*:\s*(\d+)", root)
    killed = re.search(r"Signal \d+ \((\w+)\) received", root)
    error = None
    if rank:
        error = _exception_line(re.findall(rf"^\[rank{rank.group(1)}\]:\s?(.*)$", output, re.M))
    error = error or _exception_line(root.splitlines()) or (None if root else _exception_line(output.splitlines()))
    who = f"rank {rank.group(1)}" if rank else "a process"
    again = ("Running it again is safe: the other processes were stopped, and with --resume and the same "
             "--checkpoint the run continues from rank 0's last checkpoint.")
    if killed and not error:
        cause = (" SIGKILL usually comes from the system's out-of-memory killer: close other programs or use a "
                 "smaller batch." if killed.group(1) == "SIGKILL" else "")
        last = _last_lines_before_report(output)
        return (f"The run of {processes} process(es) failed: {who} crashed (killed by signal {killed.group(1)}). "
                "The process itself died, in PyTorch's or the system's code or stopped from outside; your code "
                f"raised no error, so there is no traceback to look for.{cause} {again}"
                + ("\nThe last lines the run printed before the crash:\n" + "\n".join(last) if last else ""))
    what = f"raised {error}" if error else f"exited with code {returncode}"
    message = (f"The run of {processes} process(es) failed: {who} {what}. torchrun then stopped the other "
               "processes; that rank's traceback is in the output. Fix the error and launch again (with --resume "
               "and the same --checkpoint to continue from rank 0's last checkpoint).")
    if with_traceback:  # the output was not shown: add that rank's traceback, else the output's end
        lines = re.findall(rf"^\[rank{rank.group(1)}\]:\s?(.*)$", output, re.M)[-20:] if rank else []
        message += "\n" + "\n".join(lines or output.strip().splitlines()[-40:])
    return message


_TORCHRUN_REPORT = re.compile(r"^[EWI]\d{4} .*torch/distributed/elastic/|^Traceback \(most recent call last\):\s*$|"
                              r"ChildFailedError|^Root Cause|^=+$")  # where torchrun's own report begins


def _last_lines_before_report(output: str, count: int = 8) -> list[str]:
    """Return the last ``count`` non-empty lines the processes printed before torchrun's failure report."""
    lines = output.splitlines()
    end = next((i for i, line in enumerate(lines) if _TORCHRUN_REPORT.search(line)), len(lines))
    return [line for line in lines[:end] if line.strip()][-count:]


def _descendants(pid: int) -> list[int]:
    """Return the ids of every process below ``pid`` (read from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _stop_tree(proc: subprocess.Popen) -> None:
    """Kill torchrun and every process it started (its workers run in sessions of their own)."""
    try:
        os.kill(proc.pid, signal.SIGSTOP)  # frozen, it starts nothing new while its tree is read
    except ProcessLookupError:
        pass
    for pid in [*_descendants(proc.pid), proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_torchrun(args: list[str], processes: int, *, module: str | None = "course_utils.train",
                 script: str | Path | None = None, threads_per_process: int | None = None, timeout_s: float = 600,
                 echo: bool = True, env: dict | None = None) -> str:
    """Run ``torchrun --nproc-per-node=processes`` on ``module`` (or ``script``) and return its output.

    Rank 0 listens on a free port of 127.0.0.1. Each process gets ``threads_per_process`` CPU
    threads (default: this machine's cores shared out, at least 1), so N processes never ask
    for more cores than there are. With ``echo`` the command and the output are printed as they
    come (a progress bar at its last state). If any process fails, torchrun stops the others and
    this raises one CourseError naming the rank and its error; a run longer than ``timeout_s``
    is stopped (all its processes) and reported the same way: a failure never hangs.
    """
    command = torchrun_command(args, processes, module=module, script=script)
    threads = threads_per_process or max(1, _cores() // processes)
    full_env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1", **(env or {})}
    if echo:
        print(f"$ OMP_NUM_THREADS={threads} {_readable(command, 98)}", flush=True)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
                            start_new_session=True)  # a timeout stops torchrun, its workers and theirs
    text = io.TextIOWrapper(proc.stdout, encoding="utf-8", errors="replace", newline="\n")  # keep \r in lines
    timed_out = threading.Event()

    def stop() -> None:
        timed_out.set()
        _stop_tree(proc)

    timer = threading.Timer(timeout_s, stop)
    timer.start()
    lines = []
    try:
        for line in text:
            line = line.rstrip("\n").rstrip("\r").split("\r")[-1]  # a progress bar's last state
            lines.append(line)
            if echo:
                print(line, flush=True)
        proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            _stop_tree(proc)
            proc.wait()
    output = "\n".join(lines)
    if timed_out.is_set():
        raise CourseError(f"The run of {processes} process(es) did not finish within {timeout_s:g} s and was stopped "
                          "(every process). If it was still training, give it more time (timeout_s=...); if it was "
                          "waiting, a process probably never reached the same step as the others.")
    if proc.returncode != 0:
        raise CourseError(_failure(output, proc.returncode, processes, with_traceback=not echo))
    return output


def _busy_seconds() -> float | None:
    """Return the machine's busy CPU seconds since boot, all cores together (None without /proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def torchrun_train(processes: int, *, threads_per_process: int | None = None, timeout_s: float = 600,
                   echo: bool = True, **options) -> dict:
    """Train with ``python -m course_utils.train`` on ``processes`` processes; return rank 0's report.

    ``options`` are the script's (``dataset="fashion-mnist", latent=196, epochs=2``: underscores
    become dashes, True becomes a bare flag); see ``python -m course_utils.train --help``. The
    report adds ``launch_seconds`` (the command's wall time) and ``others_cpu_share``: the share of
    all cores that other programs used meanwhile (None where unknown), which slows any measurement.
    """
    with tempfile.TemporaryDirectory() as folder:
        report = Path(folder) / "report.json"
        args = []
        for key, value in options.items():
            if value is None or value is False:
                continue
            args.append("--" + key.replace("_", "-"))
            if value is not True:
                args.append(str(value))
        busy0, own0, t0 = _busy_seconds(), sum(os.times()[:4]), time.perf_counter()  # own: with waited children
        run_torchrun([*args, "--report", str(report)], processes, threads_per_process=threads_per_process,
                     timeout_s=timeout_s, echo=echo)
        wall, busy = time.perf_counter() - t0, _busy_seconds()
        result = json.loads(report.read_text())
        result["launch_seconds"] = wall  # from the command to the last process's exit
        others = None if busy is None else (busy - busy0) - (sum(os.times()[:4]) - own0)
        result["others_cpu_share"] = None if others is None else min(1.0, max(0.0, others) / (wall * _cores()))
    return result


# --------------------------------------------------------------------------- what all-reduce does and costs
def _demo_worker(rank: int, world_size: int, port: int, images: torch.Tensor, sizes: list[int], repeats: int,
                 out: str) -> None:
    """One process of `all_reduce_demo`: its gradient on its slice, all-reduced, and timed all-reduces."""
    import torch.distributed as dist
    from ..models import ConvAutoencoder
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.manual_seed(0)  # the same weights in every process
    model = ConvAutoencoder(images.shape[-1], images.shape[1], (16, 32), latent=32)
    per = images.shape[0] // world_size
    x = images[rank * per:(rank + 1) * per].float() / 255
    torch.nn.functional.mse_loss(model(x), x).backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    dist.all_reduce(grads)  # SUM over the processes ...
    grads /= world_size  # ... divided by their number: the mean, as DDP computes it
    times = {}
    for n in sizes:
        t = torch.ones(n)
        dist.all_reduce(t)  # warm-up: the first call sets up the connection
        clock = []
        for _ in range(repeats):
            dist.barrier()
            t0 = time.perf_counter()
            dist.all_reduce(t)
            clock.append(time.perf_counter() - t0)
        times[n] = float(np.median(clock))
    if rank == 0:
        torch.save({"grads": grads, "times": times}, out)
    finish_data_parallel()  # both ranks leave together and skip interpreter shutdown (why: see there)


def all_reduce_demo(images: torch.Tensor, world_size: int = 2, sizes: tuple[int, ...] = (10**3, 10**4, 10**5, 10**6,
                    10**7), repeats: int = 5) -> dict:
    """Average gradients over ``world_size`` CPU processes with all-reduce and time all-reduces of ``sizes`` floats.

    Each process (gloo, 127.0.0.1) computes the gradient of the same small autoencoder (no batch
    norm) on its slice of ``images`` (uint8, N x C x H x W); all-reduce sums them and each process
    divides by ``world_size``. Returns ``max_difference`` between that average and the gradient of
    the whole batch computed in one process, ``parameters``, and ``seconds`` (median per all-reduce,
    by size).
    """
    import torch.multiprocessing as mp
    from ..models import ConvAutoencoder
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[0] % world_size:
        raise CourseError(f"all_reduce_demo takes uint8 images (N, C, H, W) with N a multiple of world_size="
                          f"{world_size}; got {images.dtype} {tuple(images.shape)}.")
    with tempfile.TemporaryDirectory() as folder:
        out = str(Path(folder) / "demo.pt")
        mp.spawn(_demo_worker, args=(world_size, free_port(), images, list(sizes), repeats, out), nprocs=world_size)
        result = torch.load(out, weights_only=True)
    torch.manual_seed(0)
    model = ConvAutoencoder(images.shape[-1], images.shape[1], (16, 32), latent=32)
    x = images.float() / 255
    torch.nn.functional.mse_loss(model(x), x).backward()
    whole = torch.cat([p.grad.flatten() for p in model.parameters()])
    return {"max_difference": float((result["grads"] - whole).abs().max()),
            "largest_gradient": float(whole.abs().max()), "parameters": whole.numel(),
            "seconds": {int(n): s for n, s in result["times"].items()}}


# --------------------------------------------------------------------------- a learner's worker on N processes
def _spawned(rank: int, worker: Callable, world_size: int, port: int, args: tuple, out: str) -> None:
    """Run one process of `spawn_workers`: the worker, then the clean exit every rank takes together."""
    worker(rank, world_size, port, *args, out)
    finish_data_parallel()  # both ranks leave together and skip interpreter shutdown (why: see there)


def spawn_workers(worker: Callable, world_size: int, *args, threads_per_process: int = 1) -> dict:
    """Run ``worker(rank, world_size, port, *args, out)`` on ``world_size`` processes; return what rank 0 saved.

    The worker must be importable (saved in a module, not defined in a notebook cell: each new
    process imports it by name), join the process group on 127.0.0.1:``port`` and have rank 0
    ``torch.save`` a dict to ``out``. Every process gets ``threads_per_process`` CPU threads; after
    the worker returns, each calls `finish_data_parallel` (wait for every rank, close the group,
    exit). A process that raises stops the launch with its traceback.
    """
    import torch.multiprocessing as mp
    if world_size < 1:
        raise CourseError(f"world_size must be at least 1, got {world_size}.")
    if getattr(worker, "__module__", "__main__") == "__main__":
        raise CourseError(f"{getattr(worker, '__name__', worker)} is defined in this notebook, so a new process "
                          "cannot import it. Save its cell (#@save, then tools/save_cells.py) and pass the saved "
                          "one, e.g. ch10_distributed.train_data_parallel.")
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads_per_process)  # read by each new process's torch at import
    try:
        with tempfile.TemporaryDirectory() as folder:
            out = str(Path(folder) / "rank0.pt")
            mp.spawn(_spawned, args=(worker, world_size, free_port(), args, out), nprocs=world_size)
            if not Path(out).exists():
                raise CourseError(f"{worker.__name__} returned without saving rank 0's result to `out`: end it "
                                  "with `if rank == 0: torch.save({...}, out)`.")
            return torch.load(out, weights_only=True)
    finally:
        if before is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = before
