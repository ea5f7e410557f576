"""Data-parallel fine-tuning: one run, on one process, under DDP (``torchrun``) and with ``accelerate``.

The task is small and real: an MLP whose backbone was pretrained on the handwritten digits 0-4
is fine-tuned, with a new head, on the digits 5-9 (scikit-learn's 1,797 8x8 images; they ship
with scikit-learn, nothing is downloaded). :func:`finetune` is plain PyTorch and runs alone or as
one rank of a ``torchrun`` job; :func:`finetune_accelerate` is the same loop with Hugging Face
``accelerate``. Rank 0 writes ``weights.safetensors`` and ``result.json`` (losses, the sample
indices each rank saw, world size, seconds) to ``out_dir``; nothing is ever pickled.

With the same *global* batch ``B``, one process with batches of ``B`` and ``W`` processes with
``B / W`` each take the same optimisation steps: DDP averages the ranks' gradients, and the
sampler gives the ranks of step ``k`` exactly the samples the single process sees at step ``k``.

Command line::

    python -m transfer_utils.distributed --mode single --out runs/single
    python -m torch.distributed.run --nnodes 1 --nproc_per_node 2 --master_addr 127.0.0.1 --master_port 29500 \
        -m transfer_utils.distributed --mode ddp --out runs/ddp
    accelerate launch --multi_gpu --num_processes 2 --main_process_ip 127.0.0.1 --main_process_port 29500 \
        -m transfer_utils.distributed --mode accelerate --out runs/acc

The port is explicit: with ``--standalone`` or port 0, some versions (torch 2.5) hand the workers
``MASTER_PORT=0`` and they wait forever. :func:`launch` picks a free one (:func:`free_port`).

Example::

    init = pretrain_backbone("runs/pretrained.safetensors")
    single, ddp = launch("single", "runs/single", init=init), launch("ddp", "runs/ddp", nproc=2, init=init)
    max_weight_difference(single.weights, ddp.weights)      # about 1e-7: float32 rounding
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from .errors import ConfigError, LaunchError, LaunchTimeoutError, TransferUtilsError
from .fileio import atomic_path, atomic_write_json

MODES = ("single", "ddp", "accelerate")
LOOPBACK = "127.0.0.1"  #: where the processes of a one-machine job meet (rendezvous)


@dataclass(frozen=True)
class RunConfig:
    """Everything that defines the run; identical on every rank."""

    global_batch: int = 32  #: samples per optimiser step, summed over all processes
    epochs: int = 10
    backbone_lr: float = 3e-3  #: the pretrained layers move slowly ...
    head_lr: float = 1e-2  #: ... the new head fast (chapter 4's discriminative rates)
    hidden: int = 64
    seed: int = 0
    device: str = "auto"  #: "cpu", "cuda" (one GPU per process), or "auto": cuda if every process gets a GPU


@dataclass
class RunResult:
    """What rank 0 wrote to ``out_dir``, read back by :func:`load_run`."""

    weights: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------
# The task: digits 0-4 (pretraining), digits 5-9 (fine-tuning)
# ----------------------------------------------------------------------------------------------


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 8x8 digits that ship inside scikit-learn (``sklearn.datasets.load_digits``: its
    public loader, nothing downloaded), pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data.astype(np.float32) / 16.0, digits.target.astype(np.int64)


def digits_task(seed: int = 0, test_fraction: float = 0.2) -> dict[str, TensorDataset]:
    """``source`` (digits 0-4), ``train`` and ``test`` (digits 5-9, relabelled 0-4).

    ``train`` yields ``(x, y, index)``: the index lets each rank record which samples it saw.
    """
    x, y = (torch.from_numpy(a) for a in load_digits_arrays())
    source, target = y < 5, y >= 5
    xt, yt = x[target], y[target] - 5
    order = torch.randperm(len(yt), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(order) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    return {"source": TensorDataset(x[source], y[source]),
            "train": TensorDataset(xt[train], yt[train], torch.arange(len(train))),
            "test": TensorDataset(xt[test], yt[test])}


def build_model(hidden: int = 64, num_classes: int = 5) -> nn.Sequential:
    """``backbone`` (two ReLU layers, no BatchNorm, no dropout) followed by a linear ``head``."""
    backbone = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
    return nn.Sequential(OrderedDict(backbone=backbone, head=nn.Linear(hidden, num_classes)))


def pretrained_backbone(cfg: RunConfig = RunConfig(), steps: int = 150) -> dict[str, torch.Tensor]:
    """Train :func:`build_model` on the digits 0-4 (full batch, Adam) and return its backbone's weights."""
    torch.manual_seed(cfg.seed)
    model, data = build_model(cfg.hidden), digits_task(cfg.seed)["source"]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data.tensors[0]), data.tensors[1]).backward()
        optimizer.step()
    return {k: v.detach().contiguous() for k, v in model.backbone.state_dict().items()}


def pretrain_backbone(path: str | Path, cfg: RunConfig = RunConfig()) -> Path:
    """Save :func:`pretrained_backbone` to ``path`` (safetensors): the checkpoint every run starts from."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(pretrained_backbone(cfg), path)
    return path


def fine_tuning_model(cfg: RunConfig, init: str | Path | None) -> tuple[nn.Sequential, torch.optim.Optimizer]:
    """The pretrained backbone (from ``init``; pretrained in memory if ``None``), a new head seeded
    with ``cfg.seed``, and AdamW with one learning rate for each."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.hidden)
    model.backbone.load_state_dict(pretrained_backbone(cfg) if init is None else load_file(init))
    optimizer = torch.optim.AdamW([{"params": model.backbone.parameters(), "lr": cfg.backbone_lr},
                                   {"params": model.head.parameters(), "lr": cfg.head_lr}], weight_decay=0.0)
    return model, optimizer


# ----------------------------------------------------------------------------------------------
# Distributed plumbing
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistEnv:
    """Who this process is, as ``torchrun`` (or ``accelerate launch``) told it."""

    rank: int  #: 0 .. world_size-1, over all machines
    world_size: int  #: number of processes in the job
    local_rank: int  #: index on this machine: which GPU to use
    local_world_size: int  #: processes on this machine


def dist_env() -> DistEnv:
    """Read ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``; a plain ``python`` run is rank 0 of 1."""
    get = os.environ.get
    return DistEnv(int(get("RANK", 0)), int(get("WORLD_SIZE", 1)), int(get("LOCAL_RANK", 0)),
                   int(get("LOCAL_WORLD_SIZE", 1)))


def resolve_device(requested: str, env: DistEnv, gpu_count: int | None = None) -> torch.device:
    """``cuda:LOCAL_RANK`` (one GPU per process) or the CPU. ``"auto"`` takes the GPUs only if there
    is one for every process on this machine: two processes cannot share one GPU under NCCL."""
    gpus = torch.cuda.device_count() if gpu_count is None else gpu_count
    if requested not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda', got {requested!r}")
    if requested == "cuda" and gpus < env.local_world_size:
        raise ConfigError(f"{env.local_world_size} process(es) on this machine but {gpus} GPU(s): start at most "
                          f"{gpus} per machine (--nproc_per_node {gpus}) or pass --device cpu.")
    if requested == "cpu" or gpus < env.local_world_size:
        return torch.device("cpu")
    return torch.device("cuda", env.local_rank)


def check_batch(global_batch: int, world_size: int, dataset_size: int | None = None) -> int:
    """Return the per-process batch ``global_batch // world_size``, or say what to change."""
    if world_size < 1 or global_batch < 1:
        raise ConfigError(f"global batch ({global_batch}) and world size ({world_size}) must be >= 1")
    if global_batch % world_size:
        below = global_batch - global_batch % world_size
        nearest = " or ".join(str(b) for b in (below, below + world_size) if b > 0)
        raise ConfigError(
            f"the global batch {global_batch} cannot be split evenly over {world_size} processes: choose a global "
            f"batch divisible by {world_size} (e.g. {nearest}), or launch a number of processes that divides "
            f"{global_batch} (torchrun --nproc_per_node, accelerate launch --num_processes).")
    if dataset_size is not None and dataset_size < global_batch:
        raise ConfigError(f"the global batch {global_batch} is larger than the {dataset_size} training samples: "
                          "lower --global-batch.")
    return global_batch // world_size


def _save(out_dir: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Rank 0 only: the weights in safetensors, everything else as JSON, each written atomically;
    ``result.json`` last, so a run that has one has its weights too."""
    out = Path(out_dir)
    with atomic_path(out / "weights.safetensors") as part:
        save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, part)
    atomic_write_json(out / "result.json", meta)


def _test_accuracy(model: nn.Module, test: TensorDataset) -> float:
    with torch.no_grad():
        x, y = test.tensors
        return float((model(x).argmax(-1) == y).float().mean())


# ----------------------------------------------------------------------------------------------
# The two training loops
# ----------------------------------------------------------------------------------------------


def finetune(out_dir: str | Path, cfg: RunConfig = RunConfig(), init: str | Path | None = None,
             mode: str = "ddp") -> None:
    """Fine-tune on the digits 5-9, alone or as one rank of a ``torchrun`` job (plain PyTorch DDP)."""
    env, start = dist_env(), time.perf_counter()
    data = digits_task(cfg.seed)
    per_rank = check_batch(cfg.global_batch, env.world_size, len(data["train"]))  # before any waiting on peers
    device = resolve_device(cfg.device, env)
    cuda = device.type == "cuda"
    if env.world_size > 1:
        if cuda:
            torch.cuda.set_device(device)  # one process per GPU: LOCAL_RANK picks it
        dist.init_process_group("nccl" if cuda else "gloo")
    try:
        model, optimizer = fine_tuning_model(cfg, init)
        model.to(device)
        net = DistributedDataParallel(model, device_ids=[env.local_rank] if cuda else None) \
            if env.world_size > 1 else model  # DDP copies rank 0's weights to every rank here
        # Rank r takes every world_size-th index of one shared, seeded permutation (see the chapter).
        sampler = DistributedSampler(data["train"], num_replicas=env.world_size, rank=env.rank,
                                     shuffle=True, seed=cfg.seed, drop_last=True)
        loader = DataLoader(data["train"], batch_size=per_rank, sampler=sampler, drop_last=True)
        losses, seen = [], []
        for epoch in range(cfg.epochs):
            sampler.set_epoch(epoch)  # a new permutation each epoch, the same on every rank
            for x, y, index in loader:
                loss = nn.functional.cross_entropy(net(x.to(device)), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # DDP: all-reduce, gradients averaged over the ranks
                optimizer.step()
                logged = loss.detach()
                if env.world_size > 1:
                    dist.all_reduce(logged)  # the mean over the global batch, for the log
                    logged /= env.world_size
                losses.append(logged.item())
                seen.append(index.to(device))
        seen_by_rank = [torch.stack(seen)]
        if env.world_size > 1:
            seen_by_rank = [torch.empty_like(seen_by_rank[0]) for _ in range(env.world_size)]
            dist.all_gather(seen_by_rank, torch.stack(seen))
        if env.rank == 0:  # one writer: the other ranks hold identical weights
            _save(out_dir, model, {
                "mode": mode, "world_size": env.world_size, "backend": dist.get_backend() if env.world_size > 1 else None,
                "global_batch": cfg.global_batch, "per_rank_batch": per_rank, "steps": len(losses),
                "losses": losses, "indices_by_rank": [s.cpu().tolist() for s in seen_by_rank],
                "test_accuracy": _test_accuracy(model.cpu(), data["test"]),
                "seconds": time.perf_counter() - start, "config": asdict(cfg)})
        if env.world_size > 1:
            # Leave together: rank 0 hosts the rendezvous store, and a rank that tears down its process
            # group while a peer is still saving can kill that peer in gloo's C++ threads at exit
            # ("terminate called without an active exception", seen on torch 2.11).
            dist.barrier()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def finetune_accelerate(out_dir: str | Path, cfg: RunConfig = RunConfig(), init: str | Path | None = None) -> None:
    """The same run with Hugging Face ``accelerate``: it sets up the process group, wraps the model
    in DDP, shards the batches and places tensors; the loop is left to us."""
    from accelerate import Accelerator

    env, start = dist_env(), time.perf_counter()
    data = digits_task(cfg.seed)
    per_rank = check_batch(cfg.global_batch, env.world_size, len(data["train"]))
    cpu = resolve_device(cfg.device, env).type == "cpu"
    accelerator = Accelerator(cpu=cpu)  # on a CPU, without cpu=True each process would run alone
    if accelerator.num_processes != env.world_size:
        raise ConfigError(f"accelerate sees {accelerator.num_processes} process(es) but WORLD_SIZE is "
                          f"{env.world_size}: on a machine without GPUs pass Accelerator(cpu=True).")
    model, optimizer = fine_tuning_model(cfg, init)
    # One global order (a 1-replica sampler); accelerate deals consecutive batches out to the ranks.
    sampler = DistributedSampler(data["train"], num_replicas=1, rank=0, shuffle=True, seed=cfg.seed, drop_last=True)
    loader = DataLoader(data["train"], batch_size=per_rank, sampler=sampler, drop_last=True)
    net, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    losses, seen = [], []
    for epoch in range(cfg.epochs):
        # Our own sampler's epoch, set directly: in older accelerate loader.set_epoch did not reach a
        # sampler under its BatchSamplerShard (seen with 1.1 and 1.6), and every epoch replayed epoch 0's order.
        sampler.set_epoch(epoch)
        loader.set_epoch(epoch)
        for x, y, index in loader:
            loss = nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
            seen.append(index)
    seen_by_rank = accelerator.gather(torch.stack(seen)).reshape(env.world_size, len(seen), per_rank)
    if accelerator.is_main_process:
        unwrapped = accelerator.unwrap_model(net)
        _save(out_dir, unwrapped, {
            "mode": "accelerate", "world_size": accelerator.num_processes,
            "backend": accelerator.state.backend, "global_batch": cfg.global_batch, "per_rank_batch": per_rank,
            "steps": len(losses), "losses": losses, "indices_by_rank": seen_by_rank.cpu().tolist(),
            "test_accuracy": _test_accuracy(unwrapped.cpu(), data["test"]),
            "seconds": time.perf_counter() - start, "config": asdict(cfg)})
    accelerator.wait_for_everyone()
    accelerator.end_training()


# ----------------------------------------------------------------------------------------------
# Launching from Python (the chapter and the tests), reading results back
# ----------------------------------------------------------------------------------------------


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port that is free on ``host`` right now: bind port 0, read the port the OS chose, close."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def launch_command(mode: str, out_dir: str | Path, *, nproc: int = 2, cfg: RunConfig = RunConfig(),
                   init: str | Path | None = None, port: int | None = None) -> list[str]:
    """The command line that runs ``mode`` with ``nproc`` processes, with this Python.

    The processes meet on the loopback address at ``port`` (default: a :func:`free_port`), never at
    port 0: some launcher versions pass the 0 on to the workers, which then wait forever.
    """
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {MODES}, got {mode!r}")
    script = ["-m", "transfer_utils.distributed", "--mode", mode, "--out", str(out_dir)]
    for f in fields(cfg):  # every field of the config, so that nothing is lost on the way
        script += [f"--{f.name.replace('_', '-')}", str(getattr(cfg, f.name))]
    script += ["--init", str(init)] if init is not None else []
    if mode == "single":
        return [sys.executable, *script]
    port = free_port() if port is None else port
    if not 0 < port < 65536:
        raise ConfigError(f"port must be between 1 and 65535, got {port}: leave it out to use a free one")
    if mode == "ddp":  # one machine, a static rendezvous at LOOPBACK:port
        return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
                "--master_addr", LOOPBACK, "--master_port", str(port), *script]
    # accelerate: --multi_gpu selects its torchrun-based launcher; on a CPU the script's Accelerator(cpu=True)
    # then runs gloo. (--cpu would start a single process unless MPI is set up.)
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_ip", LOOPBACK, "--main_process_port", str(port), *script]


# What torch's TCPStore (or an older accelerate's own check) says when another program took the port
# between free_port() and the launch.
_ADDRESS_IN_USE = re.compile(r"EADDRINUSE|already in use|another process is utilizing it", re.IGNORECASE)


def _stop_group(proc: subprocess.Popen, grace: float) -> None:
    """Stop ``proc`` and every process of its group (the launcher's workers, their children): SIGTERM,
    then SIGKILL to whatever is left after ``grace`` seconds. Also reaps ``proc``."""
    pgid = proc.pid  # started with start_new_session=True: the leader of its own group
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:  # finished, and left nothing behind
        proc.wait()
        return
    deadline = time.monotonic() + grace
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _run_group(command: list[str], env: dict[str, str], timeout: float, grace: float) -> tuple[int | None, str]:
    """Run ``command`` in a new session; return its exit code (``None``: timed out, stopped) and its stderr.

    The output goes to files, not pipes: a worker that outlives the launcher cannot block us. However it
    ends (finished, timed out, interrupted), no process of the group is left running.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                start_new_session=True)
        returncode = None
        try:
            returncode = proc.wait(timeout=max(timeout, 0))
        except subprocess.TimeoutExpired:
            pass
        finally:  # also on KeyboardInterrupt; after a normal end it removes orphaned workers, if any
            _stop_group(proc, grace)
        err.seek(0)
        return returncode, err.read().decode(errors="replace")


def launch(mode: str, out_dir: str | Path, *, nproc: int = 2, cfg: RunConfig = RunConfig(),
           init: str | Path | None = None, timeout: float = 300, grace: float = 10) -> RunResult:
    """Run :func:`launch_command` in a subprocess (one thread per process) and load its result.

    After ``timeout`` seconds the launcher and all its processes get SIGTERM, ``grace`` seconds later
    SIGKILL, and :class:`~transfer_utils.errors.LaunchTimeoutError` says so; a failed run raises
    :class:`~transfer_utils.errors.LaunchError`. If the port was taken between choosing and
    starting (another program), the run is started once more on a new port.
    ``meta["wall_seconds"]`` is the launcher's wall time, start-up included.
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR=LOOPBACK)
    package_root = str(Path(__file__).resolve().parents[1])  # the subprocesses import this very package
    if "-packages" not in package_root:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    start = time.perf_counter()
    for attempt in (1, 2):
        command = launch_command(mode, out_dir, nproc=nproc, cfg=cfg, init=init)
        returncode, stderr = _run_group(command, env, timeout - (time.perf_counter() - start), grace)
        if returncode is None:
            tail = "\n".join(stderr.strip().splitlines()[-15:]) or "(nothing)"
            raise LaunchTimeoutError(
                f"the {mode} run did not finish within {timeout:g} s and was stopped (the launcher and all its "
                f"processes were killed). On a busy machine pass a larger timeout to distributed.launch; if it "
                f"hangs every time, the processes are waiting for each other (a rank that failed, a blocked port) "
                f"— the last lines it wrote to stderr:\n{tail}")
        if returncode == 0 or mode == "single" or attempt == 2 or not _ADDRESS_IN_USE.search(stderr):
            break
    wall = time.perf_counter() - start
    if returncode != 0:
        said = list(dict.fromkeys(line for line in stderr.splitlines() if ": error: " in line))
        raise LaunchError(f"the {mode} run failed (exit code {returncode}):\n"
                          + ("\n".join(said) if said else stderr[-3000:]))
    run = load_run(out_dir)
    run.meta["wall_seconds"] = wall
    return run


def load_run(out_dir: str | Path) -> RunResult:
    """The weights and ``result.json`` that rank 0 wrote to ``out_dir``."""
    out = Path(out_dir)
    return RunResult(load_file(out / "weights.safetensors"), json.loads((out / "result.json").read_text()))


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """``max |a - b|`` over every parameter of two state dicts with the same keys."""
    if a.keys() != b.keys():
        raise ConfigError(f"the runs have different parameters: {sorted(a.keys() ^ b.keys())}")
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def parse_command_line(argv: list[str] | None = None) -> argparse.Namespace:
    """The options of ``python -m transfer_utils.distributed``; ``.config`` holds the :class:`RunConfig`."""
    parser = argparse.ArgumentParser(prog="python -m transfer_utils.distributed", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=MODES, required=True,
                        help="single: one process; ddp: plain PyTorch, launch with torchrun; accelerate: HF accelerate")
    parser.add_argument("--out", required=True, help="folder for weights.safetensors and result.json (rank 0)")
    for f in fields(RunConfig):  # --global-batch, --epochs, ..., --device: one option per field
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                            choices=("auto", "cpu", "cuda") if f.name == "device" else None)
    parser.add_argument("--init", help="pretrained backbone (safetensors); default: pretrain it in memory")
    args = parser.parse_args(argv)
    args.config = RunConfig(**{f.name: getattr(args, f.name) for f in fields(RunConfig)})
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_command_line(argv)
    try:
        if args.mode == "single" and dist_env().world_size > 1:
            raise ConfigError("--mode single was started by a launcher with WORLD_SIZE > 1: use --mode ddp")
        if args.mode == "accelerate":
            finetune_accelerate(args.out, args.config, args.init)
        else:
            finetune(args.out, args.config, args.init, mode=args.mode)
    except TransferUtilsError as err:  # a mistake in the arguments: the advice, not a traceback
        print(f"python -m transfer_utils.distributed (rank {dist_env().rank}): error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
