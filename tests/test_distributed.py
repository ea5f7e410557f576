"""Data parallelism, checked end to end: two processes (torchrun + DDP, and accelerate) on the CPU
with gloo end with the weights of one process that takes the same global batches, and each rank
really did half of the work."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transfer_utils import distributed
from transfer_utils.errors import ConfigError

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
    return {mode: distributed.launch(mode, root / mode, nproc=2, cfg=CFG, init=pretrained, timeout=180)
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
    with pytest.raises(RuntimeError, match=r"\(rank [01]\): error: the global batch 33 cannot be split evenly"):
        distributed.launch("ddp", tmp_path, nproc=2, cfg=distributed.RunConfig(global_batch=33, device="cpu"), timeout=60)
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
