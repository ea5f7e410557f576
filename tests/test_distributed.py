"""Data parallelism, checked end to end: two processes (torchrun + DDP, and accelerate) on the CPU
with gloo end with the weights of one process that takes the same global batches, and each rank
really did half of the work."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from transfer_utils import distributed
from transfer_utils.errors import ConfigError, LaunchError, LaunchTimeoutError

# Same samples, same steps: only the order of float32 additions differs (a sum over 32 samples
# vs two sums over 16 added by the all-reduce), a few ulps (~1e-7 relative) per gradient. Over
# the run's 220 AdamW steps this stays near 1e-7 in the weights (measured); 1e-5 leaves a margin
# of about 100 and is still 1,000 times smaller than the effect of a different global batch,
# which ``test_a_different_global_batch_is_not_within_tolerance`` shows is detected.
ATOL = 1e-5
# On the CPU (gloo) also on a GPU machine: two processes need two GPUs, and CPU float is the same everywhere.
CFG = distributed.RunConfig(device="cpu")


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The checkpoint every run starts from, written once."""
    return distributed.pretrain_backbone(tmp_path_factory.mktemp("pretrained") / "backbone.safetensors", CFG)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, pretrained: Path) -> dict[str, distributed.RunResult]:
    root = tmp_path_factory.mktemp("runs")
    return {mode: distributed.launch(mode, root / mode, nproc=2, cfg=CFG, init=pretrained, timeout=1200)
            for mode in distributed.MODES}


@pytest.mark.parametrize("mode", ["ddp", "accelerate"])
def test_two_processes_end_with_the_single_process_weights(runs: dict[str, distributed.RunResult], mode: str) -> None:
    single, multi = runs["single"], runs[mode]
    assert single.meta["world_size"] == 1
    assert multi.meta["world_size"] == 2 and multi.meta["backend"] == "gloo"
    assert multi.meta["per_rank_batch"] * 2 == single.meta["per_rank_batch"] == CFG.global_batch
    assert multi.meta["steps"] == single.meta["steps"] > 0
    assert single.weights.keys() == multi.weights.keys()
    for name, weight in single.weights.items():
        assert torch.allclose(weight, multi.weights[name], rtol=0, atol=ATOL), (mode, name)
    # The logged loss is the global-batch mean on every step (all-reduced), so the curves agree too.
    assert max(abs(a - b) for a, b in zip(single.meta["losses"], multi.meta["losses"])) < 1e-4
    assert single.meta["test_accuracy"] > 0.9  # the run learns; both end with the same model
    assert multi.meta["test_accuracy"] == pytest.approx(single.meta["test_accuracy"], abs=0.01)


@pytest.mark.parametrize("mode", ["ddp", "accelerate"])
def test_each_rank_takes_half_of_every_global_batch(runs: dict[str, distributed.RunResult], mode: str) -> None:
    (single,) = runs["single"].meta["indices_by_rank"]
    rank0, rank1 = runs[mode].meta["indices_by_rank"]
    assert len(rank0) == len(rank1) == len(single)
    for step, (a, b, whole) in enumerate(zip(rank0, rank1, single)):
        assert len(a) == len(b) == CFG.global_batch // 2
        assert not set(a) & set(b), f"step {step}: both ranks trained on the same sample"
        assert sorted(a + b) == sorted(whole), f"step {step}: the ranks' union is not the single run's batch"
    # Every epoch covers (all but the dropped remainder of) the training set, in a new order.
    steps_per_epoch = len(single) // CFG.epochs
    first, second = single[:steps_per_epoch], single[steps_per_epoch:2 * steps_per_epoch]
    assert len({i for batch in first for i in batch}) == steps_per_epoch * CFG.global_batch
    assert first != second


def test_a_different_global_batch_is_not_within_tolerance(runs: dict[str, distributed.RunResult],
                                                          pretrained: Path, tmp_path: Path) -> None:
    """Keeping the per-process batch (32 each, 64 in all) is a different run: the check must see it."""
    bigger = distributed.RunConfig(global_batch=2 * CFG.global_batch, device="cpu")
    distributed.finetune(tmp_path, bigger, init=pretrained, mode="single")
    other = distributed.load_run(tmp_path)
    assert distributed.max_weight_difference(other.weights, runs["ddp"].weights) > 1000 * ATOL


def test_uneven_global_batch_is_refused_with_advice() -> None:
    with pytest.raises(ConfigError, match=r"33 cannot be split evenly over 2 processes.*e\.g\. 32 or 34"):
        distributed.check_batch(33, 2)
    with pytest.raises(ConfigError, match="larger than the 100 training samples"):
        distributed.check_batch(128, 2, dataset_size=100)
    assert distributed.check_batch(32, 2) == 16


def test_uneven_global_batch_fails_fast_under_torchrun(tmp_path: Path) -> None:
    """Every rank checks before joining the process group, so nobody waits for a peer that quit."""
    with pytest.raises(LaunchError, match=r"\(rank [01]\): error: the global batch 33 cannot be split evenly"):
        distributed.launch("ddp", tmp_path, nproc=2, cfg=distributed.RunConfig(global_batch=33, device="cpu"), timeout=600)
    assert not (tmp_path / "weights.safetensors").exists()


def test_launch_rejects_an_unknown_mode(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mode must be one of"):
        distributed.launch_command("deepspeed", tmp_path)


def test_one_gpu_per_process_or_the_cpu() -> None:
    two_here = distributed.DistEnv(rank=1, world_size=2, local_rank=1, local_world_size=2)
    assert distributed.resolve_device("auto", two_here, gpu_count=2) == torch.device("cuda", 1)
    assert distributed.resolve_device("auto", two_here, gpu_count=1) == torch.device("cpu")  # NCCL can't share a GPU
    assert distributed.resolve_device("cpu", two_here, gpu_count=8) == torch.device("cpu")
    with pytest.raises(ConfigError, match=r"2 process\(es\) on this machine but 1 GPU.*--nproc_per_node 1"):
        distributed.resolve_device("cuda", two_here, gpu_count=1)


@pytest.mark.parametrize("mode", distributed.MODES)
def test_the_command_line_carries_the_whole_config(mode: str, tmp_path: Path) -> None:
    cfg = distributed.RunConfig(global_batch=48, epochs=3, backbone_lr=7e-4, head_lr=0.02, hidden=16, seed=5,
                                device="cpu")
    command = distributed.launch_command(mode, tmp_path, nproc=2, cfg=cfg, init=tmp_path / "b.safetensors")
    args = distributed.parse_command_line(command[command.index("transfer_utils.distributed") + 1:])
    assert (args.mode, args.out, args.init, args.config) == (mode, str(tmp_path), str(tmp_path / "b.safetensors"), cfg)


# ----------------------------------------------------------------------------------------------
# The launcher: an explicit port, and nothing left running after a timeout
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "flag"), [("ddp", "--master_port"), ("accelerate", "--main_process_port")])
def test_the_launch_command_names_a_free_port_on_the_loopback_address(mode: str, flag: str, tmp_path: Path) -> None:
    """Port 0 (or torchrun --standalone) reaches the workers as MASTER_PORT=0 on torch 2.5: they wait forever."""
    command = distributed.launch_command(mode, tmp_path, nproc=2, cfg=CFG)
    assert "--standalone" not in command
    port = int(command[command.index(flag) + 1])
    assert 0 < port < 65536
    assert "127.0.0.1" in command
    chosen = distributed.launch_command(mode, tmp_path, cfg=CFG, port=29511)
    assert chosen[chosen.index(flag) + 1] == "29511"
    with pytest.raises(ConfigError, match="port must be between 1 and 65535"):
        distributed.launch_command(mode, tmp_path, cfg=CFG, port=0)


def test_free_port_can_be_bound() -> None:
    port = distributed.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", port))  # raises OSError if it was not free


# A "launcher" that hangs: it starts a worker that holds stdout and stderr open and sleeps, then
# sleeps itself, ignoring SIGTERM (so that only SIGKILL stops it). Both pids go to a file.
_HANGING_LAUNCHER = """
import os, signal, subprocess, sys, time
worker = subprocess.Popen([sys.executable, "-c", "import time; print('worker up', flush=True); time.sleep(3600)"])
signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(sys.argv[1], "w") as f:
    f.write(f"{os.getpgid(0)} {worker.pid}")
print("launcher waiting", file=sys.stderr, flush=True)
time.sleep(3600)
"""


def _gone(pid: int, kill=os.killpg) -> bool:
    """No process ``pid`` (with ``kill=os.kill``) or no process in group ``pid`` (``os.killpg``) exists."""
    try:
        kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_hanging_run_is_killed_with_all_its_processes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pids = tmp_path / "pids"
    monkeypatch.setattr(distributed, "launch_command",
                        lambda *args, **kwargs: [sys.executable, "-c", _HANGING_LAUNCHER, str(pids)])
    timeout, grace, outcome = 3.0, 2.0, {}

    def call() -> None:
        try:
            distributed.launch("ddp", tmp_path / "run", cfg=CFG, timeout=timeout, grace=grace)
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome["error"] = err

    thread = threading.Thread(target=call, daemon=True)  # the guard: a hanging launch fails the test
    thread.start()
    thread.join(timeout + grace + 30)
    pgid, worker = (int(n) for n in pids.read_text().split()) if pids.exists() else (None, None)
    try:
        assert not thread.is_alive(), "launch() still blocked 30 s after its timeout"
        assert worker is not None
        # Killed processes are reaped by init a moment later: wait for that, generously.
        deadline = time.monotonic() + 30
        while not _gone(worker, os.kill) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gone(worker, os.kill), f"the launcher's worker {worker} survived the timeout"
        assert pgid != os.getpgid(0), "the launcher must run in a process group of its own"
        while not _gone(pgid) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _gone(pgid), f"processes of the launcher's group {pgid} survived the timeout"
        assert isinstance(outcome.get("error"), LaunchTimeoutError), outcome
        message = str(outcome["error"])
        assert "did not finish within 3 s" in message and "larger timeout" in message
        assert "launcher waiting" in message  # what it wrote to stderr is shown
    finally:  # on failure, leave nothing running behind the test (and never signal the test's own group)
        if worker is not None:
            kills = [lambda: os.kill(worker, signal.SIGKILL)]
            if pgid != os.getpgid(0):
                kills.append(lambda: os.killpg(pgid, signal.SIGKILL))
            for kill in kills:
                try:
                    kill()
                except (ProcessLookupError, PermissionError):
                    pass


_FAILS_ON_A_TAKEN_PORT = """
import sys
from pathlib import Path
port, taken, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
if port == taken:
    sys.exit("torch.distributed.DistNetworkError: The server socket has failed to listen on any local network "
             f"address. port: {port}, useIpv6: false, code: -98, name: EADDRINUSE, message: address already in use")
import json, struct
out.mkdir(parents=True)  # a one-tensor safetensors file, written by hand (importing torch takes seconds)
header = json.dumps({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
(out / "weights.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + struct.pack("<f", 0.0))
(out / "result.json").write_text(json.dumps({"port": port}))
"""


def test_a_port_taken_before_the_launch_is_replaced_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    taken, free = 40001, 40002
    ports = iter([taken, free])
    monkeypatch.setattr(distributed, "free_port", lambda: next(ports))
    monkeypatch.setattr(distributed, "launch_command", lambda mode, out_dir, **kwargs: [
        sys.executable, "-c", _FAILS_ON_A_TAKEN_PORT, str(distributed.free_port()), str(taken), str(out_dir)])
    assert distributed.launch("ddp", tmp_path / "run", cfg=CFG, timeout=120).meta["port"] == free
    # Taken twice: the second failure is reported, not retried again.
    ports = iter([taken, taken, free])
    with pytest.raises(LaunchError, match="EADDRINUSE"):
        distributed.launch("ddp", tmp_path / "run2", cfg=CFG, timeout=120)
