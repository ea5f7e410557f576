"""The chapter-4 recipe: per-stage learning rates, freezing, L2-SP, BatchNorm, resumable runs."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.data import TensorDataset

from transfer_utils import models, recipes
from transfer_utils.errors import ConfigError


def _data(n: int = 24, classes: int = 3) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, 32, 32, generator=g) + y.view(-1, 1, 1, 1).float()
    return TensorDataset(x, y)


def _resnet(classes: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.replace_head(torchvision.models.resnet18(), classes)


def test_stage_learning_rates_fall_by_the_decay_per_stage() -> None:
    lrs = recipes.stage_learning_rates(_resnet(), recipes.FinetuneConfig(head_lr=1e-2, backbone_lr=1e-3, lr_decay=0.5))
    assert lrs == pytest.approx({"head": 1e-2, "layer4": 1e-3, "layer3": 5e-4, "layer2": 2.5e-4,
                                 "layer1": 1.25e-4, "stem": 6.25e-5})


def test_frozen_stages_and_their_batchnorm_do_not_move() -> None:
    model = _resnet()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = recipes.FinetuneConfig(epochs=2, batch_size=4, freeze_until="layer3")
    history = recipes.finetune(model, _data(), None, cfg)
    after = model.state_dict()
    for name in before:
        if name.startswith(("conv1", "bn1", "layer1", "layer2", "layer3")):
            assert torch.equal(before[name], after[name]), f"{name} moved although frozen"
    assert not torch.equal(before["layer4.0.conv1.weight"], after["layer4.0.conv1.weight"])
    assert not torch.equal(before["layer4.0.bn1.running_mean"], after["layer4.0.bn1.running_mean"])
    assert len(history.epochs) == 2 and history.epochs[-1].lr == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0


def test_frozen_batchnorm_drifts_when_left_in_train_mode() -> None:
    model = _resnet()
    before = model.bn1.running_mean.clone()
    recipes.finetune(model, _data(), None, recipes.FinetuneConfig(epochs=1, batch_size=4, freeze_until="layer3",
                                                                  frozen_bn_eval=False))
    assert not torch.equal(before, model.bn1.running_mean)


def test_l2sp_keeps_the_weights_nearer_their_start() -> None:
    def distance(alpha: float | None) -> float:
        model = _resnet()
        start = [p.detach().clone() for p in model.layer4.parameters()]
        cfg = recipes.FinetuneConfig(epochs=2, batch_size=4, head_lr=1e-2, backbone_lr=1e-2, l2sp_alpha=alpha,
                                     warmup_fraction=0.0)
        recipes.finetune(model, _data(), None, cfg)
        return sum(float((p.detach() - s).pow(2).sum()) for p, s in zip(model.layer4.parameters(), start))

    assert distance(100.0) < 0.5 * distance(None)


def test_gradual_unfreezing_trains_the_head_first() -> None:
    model = _resnet()
    stem = model.conv1.weight.detach().clone()
    recipes.finetune(model, _data(), None, recipes.FinetuneConfig(epochs=2, batch_size=4, gradual_unfreeze_every=1))
    assert torch.equal(stem, model.conv1.weight), "after 2 epochs only the head and layer4 have trained"
    with pytest.raises(ConfigError, match="either"):
        recipes.finetune(_resnet(), _data(), None,
                         recipes.FinetuneConfig(epochs=1, gradual_unfreeze_every=1, freeze_until="layer2"))


def test_an_interrupted_recipe_resumes_to_the_same_weights(tmp_path: Path) -> None:
    cfg = recipes.FinetuneConfig(epochs=3, batch_size=4, freeze_until="layer2")

    class Stop(Exception):
        pass

    def stop_after_one(record) -> None:
        if record.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        recipes.finetune(_resnet(), _data(), None, cfg, checkpoint_dir=tmp_path, on_epoch_end=stop_after_one)
    resumed = _resnet()
    history = recipes.finetune(resumed, _data(), None, cfg, checkpoint_dir=tmp_path)
    straight = _resnet()
    recipes.finetune(straight, _data(), None, cfg)
    assert len(history.epochs) == 3
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_negative_l2sp_alpha_is_refused() -> None:
    with pytest.raises(ConfigError, match="l2sp_alpha"):
        recipes.finetune(_resnet(), _data(), None, dataclasses.replace(recipes.FinetuneConfig(), l2sp_alpha=-1.0))


def test_resnet50_fine_tunes_its_last_stage_only() -> None:
    torch.manual_seed(0)
    model = models.replace_head(torchvision.models.resnet50(), 3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipes.finetune(model, _data(8), None, recipes.FinetuneConfig(epochs=1, batch_size=4, freeze_until="layer3"))
    moved = {k.split(".")[0] for k, v in model.state_dict().items()
             if v.dtype.is_floating_point and not torch.equal(before[k], v)}
    assert moved == {"layer4", "fc"}


@contextlib.contextmanager
def _optimizer_steps(model: torch.nn.Module) -> Iterator[list[tuple[list[float], dict[str, float]]]]:
    """Record, at every optimizer step of any optimizer over ``model``, each group's learning rate
    and ``{parameter name: weight decay}``: what that update actually uses."""
    names = {id(p): n for n, p in model.named_parameters()}
    steps: list[tuple[list[float], dict[str, float]]] = []

    def hook(opt: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        steps.append(([g["lr"] for g in opt.param_groups],
                      {names[id(p)]: g["weight_decay"] for g in opt.param_groups for p in g["params"]}))

    handle = register_optimizer_step_pre_hook(hook)
    try:
        yield steps
    finally:
        handle.remove()


def test_finetune_and_the_trainer_use_the_same_rate_and_decay_at_every_step(tmp_path: Path) -> None:
    """Chapter 6's claim: the plain loop and the Trainer, given the same settings, update with the
    same learning rate at every step and decay the same parameters."""
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    bert = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, num_labels=2)
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 50, (40, 6), generator=g), torch.arange(40) % 2
    recipe = recipes.FinetuneConfig(epochs=2, batch_size=4, head_lr=1e-3, backbone_lr=1e-3, lr_decay=1.0,
                                    warmup_fraction=0.25, decay="linear", weight_decay=0.01, clip_grad_norm=1.0,
                                    frozen_bn_eval=False)
    steps = (40 // 4) * 2

    plain_model = BertForSequenceClassification(bert)
    with _optimizer_steps(plain_model) as plain:
        recipes.finetune(plain_model, TensorDataset(ids, labels), None, recipe)
    trainer_model = BertForSequenceClassification(bert)
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, per_device_train_batch_size=4,
                             learning_rate=1e-3, warmup_steps=int(recipe.warmup_fraction * steps),
                             lr_scheduler_type="linear", weight_decay=0.01, max_grad_norm=1.0,
                             dataloader_drop_last=True, use_cpu=True, save_strategy="no", logging_strategy="no",
                             report_to="none", disable_tqdm=True)
    rows = [{"input_ids": i, "labels": y} for i, y in zip(ids, labels)]
    with _optimizer_steps(trainer_model) as hf:
        Trainer(model=trainer_model, args=args, train_dataset=rows).train()

    assert len(plain) == len(hf) == steps
    plain_lrs = [lrs[0] for lrs, _ in plain]
    assert all(set(lrs) == {lr} for (lrs, _), lr in zip(plain, plain_lrs))  # one rate for every group
    assert plain_lrs == [lrs[0] for lrs, _ in hf]
    assert plain_lrs[0] == 0.0 and max(plain_lrs) == 1e-3
    assert plain[0][1] == hf[0][1]  # the same parameters decay, by the same amount


def test_finetune_decays_no_bias_or_batchnorm_weight(timm_param_groups_weight_decay) -> None:
    model = _resnet()
    with _optimizer_steps(model) as seen:
        recipes.finetune(model, _data(8), None, recipes.FinetuneConfig(epochs=1, batch_size=4, weight_decay=0.05))
    timm_rule = {n: g["weight_decay"] for g in timm_param_groups_weight_decay(model, 0.05)
                 for n, p in model.named_parameters() if any(p is q for q in g["params"])}
    assert seen[0][1] == timm_rule and set(timm_rule.values()) == {0.0, 0.05}
