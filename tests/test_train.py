"""fit: it learns, checkpoints in safetensors, and an interrupted run resumes exactly."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from transfer_utils import evaluate, train
from transfer_utils.errors import ConfigError, DamagedFileError, DataError, NonFiniteLossError


def _data(n: int = 96, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return TensorDataset(x, y)


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))


def _setup(seed: int = 0):
    model = _model(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-2, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    loader = DataLoader(_data(), batch_size=16, shuffle=True)
    return model, opt, sched, loader


def test_fit_learns_a_separable_problem() -> None:
    model, opt, _, _ = _setup()
    loader = DataLoader(_data(512), batch_size=32, shuffle=True)
    val = DataLoader(_data(256, seed=1), batch_size=256)
    history = train.fit(model, loader, val_loader=val, epochs=15, optimizer=opt, num_classes=2, progress=False)
    assert history.epochs[-1].train_loss < history.epochs[0].train_loss
    assert history.best_val_accuracy is not None and history.best_val_accuracy > 0.9
    assert evaluate.evaluate(model, val).accuracy > 0.9


def test_interrupted_run_resumes_to_identical_weights(tmp_path: Path) -> None:
    model_a, opt_a, sched_a, loader_a = _setup()
    full = train.fit(model_a, loader_a, epochs=5, optimizer=opt_a, scheduler=sched_a,
                     checkpoint_dir=tmp_path / "a", progress=False)

    class Disconnect(Exception):
        pass

    def drop_after_two(record: train.EpochRecord) -> None:
        if record.epoch == 2:
            raise Disconnect  # the Colab runtime goes away after epoch 2

    model_b, opt_b, sched_b, loader_b = _setup()
    with pytest.raises(Disconnect):
        train.fit(model_b, loader_b, epochs=5, optimizer=opt_b, scheduler=sched_b,
                  checkpoint_dir=tmp_path / "b", on_epoch_end=drop_after_two, progress=False)

    # A fresh process: new model, optimizer and scheduler, then fit again on the same folder.
    model_c, opt_c, sched_c, loader_c = _setup(seed=123)
    resumed = train.fit(model_c, loader_c, epochs=5, optimizer=opt_c, scheduler=sched_c,
                        checkpoint_dir=tmp_path / "b", progress=False)
    assert len(resumed.epochs) == 5
    for (name, a), b in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(a, b), f"{name} differs after resume"
    assert [r.train_loss for r in resumed.epochs] == [r.train_loss for r in full.epochs]
    assert opt_c.param_groups[0]["lr"] == opt_a.param_groups[0]["lr"]


def test_checkpoints_are_safetensors_with_optimizer_state(tmp_path: Path) -> None:
    model, opt, sched, loader = _setup()
    train.fit(model, loader, epochs=2, optimizer=opt, scheduler=sched, checkpoint_dir=tmp_path,
              val_loader=loader, progress=False)
    with safe_open(tmp_path / "last.safetensors", framework="pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("model.") for k in keys)
    # the training state beside it is read with torch.load(weights_only=True): no arbitrary objects
    saved = torch.load(tmp_path / "last.state.pt", weights_only=True)
    assert {"optimizer", "scheduler", "history", "progress"} <= set(saved["states"])
    assert (tmp_path / "best.safetensors").is_file() and not (tmp_path / "best.state.pt").exists()
    assert not list(tmp_path.glob("*.part"))


def test_a_finished_run_is_not_repeated(tmp_path: Path) -> None:
    model, opt, _, loader = _setup()
    train.fit(model, loader, epochs=2, optimizer=opt, checkpoint_dir=tmp_path, progress=False)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model2, opt2, _, loader2 = _setup(seed=7)
    history = train.fit(model2, loader2, epochs=2, optimizer=opt2, checkpoint_dir=tmp_path, progress=False)
    assert len(history.epochs) == 2
    assert all(torch.equal(weights[k], v) for k, v in model2.state_dict().items())


def test_checkpoint_of_another_model_is_rejected(tmp_path: Path) -> None:
    model, opt, _, loader = _setup()
    train.fit(model, loader, epochs=1, optimizer=opt, checkpoint_dir=tmp_path, progress=False)
    other = nn.Linear(8, 3)
    with pytest.raises(ConfigError, match="does not fit this model") as info:
        train.fit(other, loader, epochs=2, optimizer=torch.optim.SGD(other.parameters(), lr=0.1),
                  checkpoint_dir=tmp_path, progress=False)
    # The message names the file and what differs, not just "Error(s) in loading state_dict".
    assert "last.safetensors" in str(info.value) and "missing from the file: weight, bias" in str(info.value)
    wider = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(ConfigError, match=r"0\.weight is \(16, 8\) in the file, \(32, 8\) in the model"):
        train.fit(wider, loader, epochs=2, optimizer=torch.optim.SGD(wider.parameters(), lr=0.1),
                  checkpoint_dir=tmp_path, progress=False)
    assert all(torch.equal(before[k], v) for k, v in wider.state_dict().items())


def _trained_run(folder: Path) -> tuple[dict[str, torch.Tensor], bytes]:
    """One epoch with checkpoints in ``folder``; return the weights and the bytes of last.safetensors."""
    model, opt, _, loader = _setup()
    train.fit(model, loader, val_loader=loader, epochs=1, optimizer=opt, checkpoint_dir=folder, progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}, (folder / "last.safetensors").read_bytes()


@pytest.mark.parametrize("keep", [0, 8, 100, 0.5, -1])
def test_a_truncated_checkpoint_is_named_with_the_way_out(tmp_path: Path, keep: float) -> None:
    weights, good = _trained_run(tmp_path)
    last = tmp_path / "last.safetensors"
    last.write_bytes(good[: int(len(good) * keep) if isinstance(keep, float) else keep])
    with pytest.raises(DamagedFileError, match="last.safetensors is damaged") as info:
        train.load_checkpoint(last)
    assert info.value.path == last
    model, opt, _, loader = _setup(seed=5)
    untouched = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DamagedFileError, match="Cannot resume") as info:
        train.fit(model, loader, epochs=2, optimizer=opt, checkpoint_dir=tmp_path, progress=False)
    assert "best.safetensors" in str(info.value) and "resume=False" in str(info.value)
    assert all(torch.equal(untouched[k], v) for k, v in model.state_dict().items())
    # The way out the message names works: the best weights load, and resume=False starts over.
    train.load_checkpoint(tmp_path / "best.safetensors", model)
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())
    history = train.fit(model, loader, epochs=1, optimizer=opt, checkpoint_dir=tmp_path, resume=False, progress=False)
    assert len(history.epochs) == 1 and "history" in train.load_checkpoint(last)


def _rewrite_states(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    saved = torch.load(train.state_file(path), weights_only=True)
    torch.save({**saved, "states": change(saved["states"])}, train.state_file(path))


@pytest.mark.parametrize("damage", ["no history", "no optimizer", "optimizer not a dict", "progress cut"])
def test_a_checkpoint_with_a_damaged_training_state_is_named(tmp_path: Path, damage: str) -> None:
    _trained_run(tmp_path)
    last = tmp_path / "last.safetensors"
    changes = {
        "no history": lambda m: {k: v for k, v in m.items() if k != "history"},
        "no optimizer": lambda m: {k: v for k, v in m.items() if k != "optimizer"},
        "optimizer not a dict": lambda m: {**m, "optimizer": [1, 2]},
        "progress cut": lambda m: {**m, "progress": {"best_acc": 0.5}},
    }
    _rewrite_states(last, changes[damage])
    model, opt, _, loader = _setup(seed=5)
    untouched = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(DamagedFileError, match="last.safetensors is damaged or was not written by fit"):
        train.fit(model, loader, epochs=2, optimizer=opt, checkpoint_dir=tmp_path, progress=False)
    assert all(torch.equal(untouched[k], v) for k, v in model.state_dict().items())


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (print, ("this must never run",))


@pytest.mark.parametrize("damage", ["cut short", "missing", "an arbitrary object", "from another epoch"])
def test_a_damaged_state_file_is_named_and_never_unpickled(tmp_path: Path, damage: str, capsys) -> None:
    _trained_run(tmp_path)
    last = tmp_path / "last.safetensors"
    states = train.state_file(last)
    if damage == "cut short":
        states.write_bytes(states.read_bytes()[:100])
    elif damage == "missing":
        states.unlink()
    elif damage == "an arbitrary object":
        saved = torch.load(states, weights_only=True)
        torch.save({**saved, "states": {**saved["states"], "history": _Payload()}}, states)
    else:
        saved = torch.load(states, weights_only=True)
        torch.save({**saved, "tag": "another"}, states)
    with pytest.raises(DamagedFileError, match="last.s") as info:
        train.load_checkpoint(last)
    assert info.value.path == states and "resume=False" not in str(info.value)
    model, opt, _, loader = _setup(seed=5)
    with pytest.raises(DamagedFileError, match="Cannot resume") as info:
        train.fit(model, loader, epochs=2, optimizer=opt, checkpoint_dir=tmp_path, progress=False)
    assert "last.state.pt" in str(info.value) and "resume=False" in str(info.value)
    assert "this must never run" not in capsys.readouterr().out


def test_an_optimizer_state_of_another_optimizer_is_named(tmp_path: Path) -> None:
    _trained_run(tmp_path)
    model, _, _, loader = _setup()
    two_groups = torch.optim.SGD([{"params": model[0].parameters()}, {"params": model[3].parameters()}], lr=0.1)
    with pytest.raises(ConfigError, match="optimizer state in .*last.safetensors does not fit this optimizer"):
        train.fit(model, loader, epochs=2, optimizer=two_groups, checkpoint_dir=tmp_path, progress=False)


def test_save_checkpoint_is_atomic(tmp_path: Path, monkeypatch) -> None:
    weights, good = _trained_run(tmp_path)
    last = tmp_path / "last.safetensors"

    def disk_full(tensors, path, metadata=None):  # type: ignore[no-untyped-def]
        Path(path).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(train, "save_file", disk_full)
    model, opt, _, loader = _setup(seed=3)
    with pytest.raises(OSError, match="No space left"):
        train.save_checkpoint(last, model, optimizer=opt.state_dict())
    assert last.read_bytes() == good, "a failed save must leave the previous checkpoint as it was"
    assert not list(tmp_path.glob("*.part")), "a failed save must not leave a .part file behind"


def test_early_stopping(tmp_path: Path) -> None:
    model, _, _, loader = _setup()
    frozen_lr = torch.optim.SGD(model.parameters(), lr=0.0)
    history = train.fit(model, loader, val_loader=loader, epochs=20, optimizer=frozen_lr,
                        early_stopping_patience=2, progress=False)
    assert history.stopped_early and len(history.epochs) == 3


def test_head_size_and_label_errors() -> None:
    model, opt, _, loader = _setup()
    with pytest.raises(ConfigError, match="replace_head"):
        train.fit(model, loader, epochs=1, optimizer=opt, num_classes=3, progress=False)
    bad = DataLoader(TensorDataset(torch.randn(4, 8), torch.tensor([0, 1, 2, 5])), batch_size=4)
    with pytest.raises(DataError, match="labels must lie in"):
        train.fit(model, bad, epochs=1, optimizer=opt, progress=False)


def test_gradient_clipping_bounds_the_update() -> None:
    model = nn.Linear(8, 2)
    before = [p.detach().clone() for p in model.parameters()]
    x = torch.randn(16, 8) * 1000  # huge inputs, huge gradients
    loader = DataLoader(TensorDataset(x, torch.randint(0, 2, (16,))), batch_size=16)
    train.fit(model, loader, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
              clip_grad_norm=0.01, progress=False)
    step = torch.sqrt(sum(((p.detach() - b) ** 2).sum() for p, b in zip(model.parameters(), before)))
    assert float(step) <= 0.01 + 1e-6


def test_nan_loss_stops_with_advice() -> None:
    model = nn.Linear(8, 2)
    loader = DataLoader(TensorDataset(torch.full((4, 8), float("nan")), torch.zeros(4, dtype=torch.long)), batch_size=4)
    with pytest.raises(FloatingPointError, match="learning rate"):
        train.fit(model, loader, epochs=1, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), progress=False)


def test_evaluate_summaries() -> None:
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 1])
    result = evaluate.summarize(logits, labels, ["neg", "pos"])
    assert result.accuracy == 0.75
    assert result.confusion.tolist() == [[1, 0], [1, 2]]
    assert "neg" in result.report and result.probs.shape == (4, 2)
    model = nn.Sequential(nn.Dropout(0.9), nn.Linear(2, 2))
    loader = DataLoader(TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long)), batch_size=8)
    model.train()
    a, b = evaluate.evaluate(model, loader), evaluate.evaluate(model, loader)
    assert (a.probs == b.probs).all(), "evaluate must switch dropout off"


def test_frozen_batchnorm_keeps_its_statistics() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))
    model[0].requires_grad_(False)
    model[1].requires_grad_(False)
    loader = DataLoader(TensorDataset(torch.randn(32, 4) * 3 + 5, torch.randint(0, 2, (32,))), batch_size=8)
    stats = model[1].running_mean.clone()
    train.fit(model, loader, epochs=1, optimizer=torch.optim.SGD(model[3].parameters(), lr=0.1),
              frozen_bn_eval=True, progress=False)
    assert torch.equal(model[1].running_mean, stats)
    train.fit(model, loader, epochs=1, optimizer=torch.optim.SGD(model[3].parameters(), lr=0.1), progress=False)
    assert not torch.equal(model[1].running_mean, stats), "without the switch, train mode updates BN statistics"


def test_fractional_labels_are_refused_and_whole_float_labels_train() -> None:
    # A float label tensor gave a raw "expected target dtype Long" RuntimeError; 0.7 must never
    # quietly become class 0, and 1.0 is class 1 (the package accepts whole-number floats everywhere).
    model, opt, _, _ = _setup()
    x = torch.randn(4, 8)
    with pytest.raises(DataError, match=r"batch labels\[2\] is 0.7"):
        train.fit(model, DataLoader(TensorDataset(x, torch.tensor([0.0, 1.0, 0.7, 1.0])), batch_size=4), epochs=1,
                  optimizer=opt, progress=False)
    history = train.fit(model, DataLoader(TensorDataset(x, torch.tensor([0.0, 1.0, 1.0, 0.0])), batch_size=4),
                        epochs=1, optimizer=opt, progress=False)
    assert len(history.epochs) == 1
    logits = torch.tensor([[2.0, 0.0], [0.0, 2.0], [3.0, 0.0]])
    assert evaluate.summarize(logits, torch.tensor([0.0, 1.0, 1.0])).accuracy == pytest.approx(2 / 3)
    with pytest.raises(DataError, match="3 rows of scores but 2 labels"):
        evaluate.summarize(logits, torch.tensor([0, 1]))
    with pytest.raises(DataError, match=r"labels\[1\] is 0.5"):
        evaluate.summarize(logits, torch.tensor([0.0, 0.5, 1.0]))


def test_a_nan_loss_leaves_the_weights_and_the_optimizer_as_before_that_batch() -> None:
    model = _model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    loader = DataLoader(_data(32), batch_size=8)  # 4 batches
    ce, calls, before = nn.CrossEntropyLoss(), [], {}

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:  # the third batch: snapshot everything, then return NaN
            before["weights"] = {k: v.clone() for k, v in model.state_dict().items()}
            before["optimizer"] = copy.deepcopy(opt.state_dict())
            before["scheduler"] = sched.state_dict()
            return ce(logits, labels) * float("nan")
        return ce(logits, labels)

    with pytest.raises(NonFiniteLossError, match="learning rate"):
        train.fit(model, loader, epochs=1, optimizer=opt, loss_fn=loss_fn, scheduler=sched,
                  scheduler_interval="step", progress=False)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before["weights"][name]), name  # bitwise: no NaN update got in
    state = opt.state_dict()
    assert [int(s["step"]) for s in state["state"].values()] == [2] * len(state["state"])
    for key, s in state["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(s[name], before["optimizer"]["state"][key][name]), name
    assert sched.state_dict() == before["scheduler"]


def test_the_schedule_only_advances_when_the_optimizer_steps() -> None:
    """With a float16 gradient scaler a step whose gradients are not finite is skipped; the Trainer
    then does not step the schedule either, so each update still uses its own learning rate."""
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    scaler = torch.amp.GradScaler("cpu")
    loader = DataLoader(_data(64), batch_size=8)  # 8 batches
    ce, calls, updates = nn.CrossEntropyLoss(), [], []

    def loss_fn(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) in (2, 5):  # a finite loss whose gradient is NaN (0 * d sqrt(u)/du at u = 0)
            return ce(logits, labels) + 0 * (logits.sum() - logits.sum()).sqrt()
        return ce(logits, labels)

    handle = opt.register_step_post_hook(lambda o, args, kwargs: updates.append(1))
    train._run_epoch(model, loader, loss_fn, torch.device("cpu"), optimizer=opt, scaler=scaler,
                     amp_dtype=None, clip_grad_norm=None, scheduler_per_step=sched, num_classes=None,
                     desc="", progress=False)
    handle.remove()
    assert len(updates) == 6  # two of the eight steps were skipped
    assert sched.last_epoch == 6
