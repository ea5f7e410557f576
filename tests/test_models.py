"""Backbones, heads, freezing by stage, parameter groups — on randomly initialised networks."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from transfer_utils import models
from transfer_utils.errors import AssetUnavailableError, ChecksumMismatchError, ConfigError, DamagedFileError


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return models.create_backbone("resnet18", pretrained=False).model


def test_stage_maps() -> None:
    r18 = models.create_backbone("resnet18", pretrained=False)
    assert list(models.stages(r18.model)) == ["stem", "layer1", "layer2", "layer3", "layer4", "head"]
    assert r18.num_features == 512
    r50 = models.create_backbone("resnet50", pretrained=False)
    assert r50.num_features == 2048
    lite = models.create_backbone("tf_efficientnet_lite0", pretrained=False)
    assert list(models.stages(lite.model)) == ["stem", "blocks.1", "blocks.2", "blocks.3-4", "blocks.5-6", "head"]
    mnv2 = models.create_backbone("mobilenet_v2", pretrained=False)
    assert list(models.stages(mnv2.model)) == ["stem", "features.2-3", "features.4-6", "features.7-13",
                                               "features.14-18", "head"]
    with pytest.raises(ConfigError, match="no stage map"):
        models.stages(nn.Linear(2, 2))


@pytest.mark.parametrize("name", ["resnet18", "resnet50", "tf_efficientnet_lite0", "mobilenet_v2"])
def test_last_stage_and_head_are_a_comparable_share_of_every_backbone(name: str) -> None:
    """freeze_until=STAGES[-3] ("fine-tune the last stage and the head") must mean about the same on
    every backbone: it was three quarters of ResNet-18 but a third of EfficientNet-Lite0."""
    model = models.replace_head(models.create_backbone(name, pretrained=False).model, 2)
    named = models.stages(model)
    models.freeze(model, until=list(named)[-3])
    share = models.count_parameters(model) / models.count_parameters(model, trainable_only=False)
    print(f"{name}: the last stage and the head hold {share:.0%} of the parameters")
    assert 0.6 < share < 0.85, f"{name}: {share:.0%}"
    # every module of the network is in exactly one stage
    listed = [id(p) for mods in named.values() for m in mods for p in m.parameters()]
    assert len(listed) == len(set(listed)) == len(list(model.parameters()))


def test_the_head_stage_is_only_the_new_classifier() -> None:
    """Pretrained layers (EfficientNet's conv_head and bn2) belong to the last stage: at the head's
    learning rate only the freshly initialised classifier trains."""
    lite = models.replace_head(models.create_backbone("tf_efficientnet_lite0", pretrained=False).model, 2)
    named = models.stages(lite)
    assert named["head"] == [lite.classifier]
    assert lite.conv_head in named["blocks.5-6"] and lite.bn2 in named["blocks.5-6"]
    mnv2 = models.replace_head(models.create_backbone("mobilenet_v2", pretrained=False).model, 2)
    assert models.stages(mnv2)["head"] == [mnv2.classifier] and models.head_of(mnv2).out_features == 2


def test_replace_head_and_check_head(resnet18: nn.Module) -> None:
    model = models.replace_head(resnet18, 5)
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 5)
    models.check_head(model, 5)
    with pytest.raises(ConfigError, match="outputs 5 classes but the data has 3"):
        models.check_head(model, 3)
    with pytest.raises(ConfigError):
        models.replace_head(model, 1)
    lite = models.replace_head(models.create_backbone("tf_efficientnet_lite0", pretrained=False).model, 3)
    assert lite(torch.randn(1, 3, 64, 64)).shape == (1, 3)


def test_freeze_until_a_stage(resnet18: nn.Module) -> None:
    model = models.freeze(models.replace_head(resnet18, 2), until="layer3")
    expected = sum(p.numel() for p in model.layer4.parameters()) + sum(p.numel() for p in model.fc.parameters())
    assert models.count_parameters(model) == expected
    assert models.count_parameters(model, trainable_only=False) > expected
    assert not any(p.requires_grad for p in model.layer3.parameters())
    models.freeze(model, until="all")
    assert models.count_parameters(model) == sum(p.numel() for p in model.fc.parameters())
    models.freeze(model, until=None)
    assert models.count_parameters(model) == models.count_parameters(model, trainable_only=False)
    with pytest.raises(ConfigError, match="unknown stage"):
        models.freeze(model, until="layer9")


def test_param_groups_skip_frozen_stages(resnet18: nn.Module) -> None:
    model = models.freeze(models.replace_head(resnet18, 2), until="layer3")
    groups = models.param_groups(model, {"layer3": 1e-5, "layer4": 1e-4, "head": 1e-3})
    assert [(g["name"], g["lr"]) for g in groups] == [("layer4", 1e-4), ("head", 1e-3)]
    opt = torch.optim.AdamW(groups)
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == models.count_parameters(model)
    with pytest.raises(ConfigError, match="unknown stage"):
        models.param_groups(model, {"fc": 1e-3})
    models.freeze(model, until="all")
    with pytest.raises(ConfigError, match="no trainable parameters"):
        models.param_groups(model, {"layer4": 1e-4})


def test_feature_extractor_leaves_the_model_intact(resnet18: nn.Module) -> None:
    resnet18.eval()
    trunk = models.feature_extractor(resnet18)
    assert trunk(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    assert isinstance(resnet18.fc, nn.Linear)
    lite = models.create_backbone("tf_efficientnet_lite0", pretrained=False)
    assert models.feature_extractor(lite.model).eval()(torch.randn(1, 3, 64, 64)).shape == (1, 1280)


def test_frozen_backbone_classifier_keeps_batchnorm_statistics(resnet18: nn.Module) -> None:
    trunk = models.feature_extractor(resnet18)
    clf = models.FrozenBackboneClassifier(trunk, nn.Linear(512, 2))
    clf.train()
    assert not clf.trunk.training and clf.head.training
    before = clf.trunk.bn1.running_mean.clone()
    out = clf(torch.randn(4, 3, 64, 64) * 5 + 3)
    assert torch.equal(clf.trunk.bn1.running_mean, before)
    out.sum().backward()
    assert clf.head.weight.grad is not None
    assert all(p.grad is None for p in clf.trunk.parameters())


def test_offline_substitution_is_printed(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no ResNet weights cached here
    bb = models.create_backbone("resnet18", offline=True)
    out = capsys.readouterr().out
    assert "SUBSTITUTION: 'resnet18'" in out and "tf_efficientnet_lite0" in out
    assert bb.substituted and bb.requested == "resnet18" and bb.name == "tf_efficientnet_lite0"


def test_missing_weights_without_the_switch_is_an_actionable_error(tmp_path, monkeypatch) -> None:
    """With the offline switch off and no network, nothing is substituted: a clear error instead."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    import urllib.request

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("network is unreachable")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    monkeypatch.setattr(torch.hub, "urlopen", no_network, raising=False)
    with pytest.raises(AssetUnavailableError, match="offline=True"):
        models.create_backbone("resnet18", offline=False)


@pytest.mark.parametrize("damage", ["cut short", "overwritten"])
def test_damaged_cached_weights_are_named(tmp_path, monkeypatch, damage: str) -> None:
    """A cached weights file damaged since its download: an error naming it, offline or not, not a raw
    unpickling error."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    cached = tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(models.create_backbone("resnet18", pretrained=False).model.state_dict(), cached)
    good = cached.read_bytes()
    cached.write_bytes(good[: len(good) // 2] if damage == "cut short" else bytes(len(good)))
    for offline in (True, False):
        with pytest.raises(ChecksumMismatchError, match=f"(?s){cached} has sha256 .*Delete it and run again"):
            models.create_backbone("resnet18", offline=offline)


_CUT_SHORT = b"\x10\x00\x00\x00\x00\x00\x00\x00{\"__metadata__\":"  # a safetensors header cut short


def test_a_damaged_converted_timm_file_is_named(tmp_path, monkeypatch) -> None:
    """The converted offline weights, damaged: the error names the file and the command that rewrites it."""
    from transfer_utils import assets

    monkeypatch.setenv("TL_DATA_HOME", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: None)  # nothing in timm's cache
    weights = assets.mirrored_weights_file("tf_efficientnet_lite0")
    weights.parent.mkdir(parents=True)
    weights.write_bytes(_CUT_SHORT)
    with pytest.raises(DamagedFileError, match="pretrained weights of 'tf_efficientnet_lite0' .*damaged.*"
                                               "assets seed: it converts the offline mirror again") as info:
        models.create_backbone("tf_efficientnet_lite0", offline=True)
    assert info.value.path == weights and str(weights) in str(info.value)


def test_a_damaged_timm_file_in_the_hub_cache_is_named(tmp_path, monkeypatch) -> None:
    """A download of an earlier online run, damaged since, is what timm reads first: named, with the way out."""
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(_CUT_SHORT)
    monkeypatch.setattr("huggingface_hub.try_to_load_from_cache", lambda *a, **k: str(weights))  # "cached"
    with pytest.raises(DamagedFileError, match="pretrained weights of 'tf_efficientnet_lite0' .*damaged. "
                                               "Delete it and run again with internet access") as info:
        models.create_backbone("tf_efficientnet_lite0", offline=True)
    assert info.value.path == weights


def test_unknown_models_are_rejected() -> None:
    with pytest.raises(ConfigError, match="registered"):
        models.create_backbone("vgg16")
    with pytest.raises(ConfigError, match="registered"):
        models.create_text_encoder("resnet18")


def test_bert_stages_freeze_and_param_groups() -> None:
    from transformers import BertConfig, BertForSequenceClassification, BertModel

    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=32, num_labels=2)
    clf = BertForSequenceClassification(cfg)
    assert list(models.stages(clf)) == ["embeddings", "encoder.0", "encoder.1", "encoder.2", "head"]
    models.freeze(clf, until="encoder.1")
    trainable = {n.split(".")[1] if n.startswith("bert.") else n.split(".")[0]
                 for n, p in clf.named_parameters() if p.requires_grad}
    assert trainable == {"encoder", "pooler", "classifier"}
    assert not any(p.requires_grad for p in clf.bert.encoder.layer[1].parameters())
    assert all(p.requires_grad for p in clf.bert.encoder.layer[2].parameters())
    groups = models.param_groups(clf, {"encoder.2": 1e-5, "head": 1e-4})
    assert [g["name"] for g in groups] == ["encoder.2", "head"]
    assert list(models.stages(BertModel(cfg)))[-1] == "head"  # the bare encoder's pooler


def test_text_classifier_from_the_mirror() -> None:
    tok, clf, used = models.create_text_classifier("sentence-transformers/all-MiniLM-L6-v2", 2, offline=True)
    batch = tok(["great", "awful"], padding=True, return_tensors="pt")
    assert clf(**batch).logits.shape == (2, 2)
    assert list(models.stages(clf))[:2] == ["embeddings", "encoder.0"] and len(models.stages(clf)) == 8


def test_attach_head_folds_a_binary_logistic_regression_and_the_standardisation() -> None:
    # The timm backbone (head named `classifier`) with a binary scikit-learn head: coef_ is [1, D].
    import numpy as np
    from sklearn.linear_model import LogisticRegression

    torch.manual_seed(0)
    lite = models.create_backbone("tf_efficientnet_lite0", pretrained=False).model.eval()
    trunk = models.feature_extractor(lite).eval()
    x = torch.randn(6, 3, 64, 64)
    with torch.no_grad():
        z = trunk(x)
    mu, sigma = z.mean(0), z.std(0) + 1e-6
    logreg = LogisticRegression(max_iter=2000).fit(((z - mu) / sigma).numpy(), [0, 1, 0, 1, 1, 0])
    for base in (lite, trunk):   # the full network or its trunk
        shipped = models.attach_head(base, logreg, mu, sigma)
        with torch.no_grad():
            probs = shipped(x).softmax(-1).numpy()
        assert np.allclose(probs, logreg.predict_proba(((z - mu) / sigma).numpy()), atol=1e-5)
        assert isinstance(shipped.classifier, nn.Linear) and shipped.classifier.out_features == 2
    assert isinstance(trunk.classifier, nn.Identity)   # the originals are left as they were
    with pytest.raises(ConfigError, match="nn.Linear or a fitted scikit-learn"):
        models.attach_head(lite, "not a head")
    with pytest.raises(ConfigError, match="takes 10 features"):
        models.attach_head(lite, nn.Linear(10, 2))


def _decay_by_param(groups: list[dict]) -> dict[int, float]:
    """``{id(param): weight_decay}`` of a list of optimizer groups."""
    return {id(p): g["weight_decay"] for g in groups for p in g["params"]}


def test_weight_decay_spares_biases_and_batchnorm_as_timm_does(timm_param_groups_weight_decay) -> None:
    model = models.replace_head(models.create_backbone("resnet18", pretrained=False).model, 3)  # all trainable
    lrs = {"stem": 1e-5, "layer1": 2e-5, "layer2": 3e-5, "layer3": 4e-5, "layer4": 5e-5, "head": 1e-3}
    groups = models.param_groups(model, lrs, weight_decay=0.05)
    ours = _decay_by_param(groups)
    timm_rule = _decay_by_param(timm_param_groups_weight_decay(model, 0.05))
    assert ours == timm_rule and len(ours) == len(list(model.parameters()))
    for name, p in model.named_parameters():
        is_bias_or_norm = name.endswith(".bias") or ".bn" in name or "downsample.1" in name or name.startswith("bn")
        assert ours[id(p)] == (0.0 if is_bias_or_norm else 0.05), name
    # Discriminative learning rates survive the split: both halves of a stage keep its rate.
    stage_of = {id(p): s for s, mods in models.stages(model).items() for m in mods for p in m.parameters()}
    for g in groups:
        assert {stage_of[id(p)] for p in g["params"]} == {g["name"].removesuffix(" (no decay)")}
        assert g["lr"] == lrs[g["name"].removesuffix(" (no decay)")]
    assert models.param_groups(model, lrs)[0].keys() == {"params", "lr", "name"}  # no split unless asked


def test_weight_decay_spares_what_timm_lists_for_a_vit() -> None:
    import timm
    import timm.optim

    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=16)
    skip = models.no_weight_decay_names(vit)
    assert {"pos_embed", "cls_token"} <= skip  # 3-D tensors, exempt only because the model says so
    optimizer = timm.optim.create_optimizer_v2(vit, "adamw", lr=1e-3, weight_decay=0.05)
    timm_skip = {id(p) for g in optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert {id(p) for n, p in vit.named_parameters() if n in skip} == timm_skip


def test_weight_decay_spares_biases_and_layernorm_as_the_trainer_does(tmp_path) -> None:
    from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

    cfg = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                     intermediate_size=32, num_labels=2)
    clf = BertForSequenceClassification(cfg)
    lrs = {"embeddings": 1e-5, "encoder.0": 2e-5, "encoder.1": 3e-5, "encoder.2": 4e-5, "head": 1e-4}
    ours = _decay_by_param(models.param_groups(clf, lrs, weight_decay=0.01))
    args = TrainingArguments(output_dir=str(tmp_path), weight_decay=0.01, use_cpu=True, report_to="none")
    trainer_rule = _decay_by_param(Trainer(model=clf, args=args).create_optimizer().param_groups)
    assert ours == trainer_rule and len(ours) == len(list(clf.parameters()))
    for name, p in clf.named_parameters():
        assert ours[id(p)] == (0.0 if name.endswith(".bias") or "LayerNorm" in name else 0.01), name
    assert ours[id(clf.bert.embeddings.word_embeddings.weight)] == 0.01  # the Trainer decays embeddings


def test_an_offline_text_model_load_makes_no_network_lookup(monkeypatch, hub_lookups) -> None:
    """``create_text_classifier(..., offline=True)`` must not ask the hub for anything (transformers
    5.x's adapter lookup ignored ``local_files_only`` and retried for ~25 s per load)."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # no process-wide switch: the call alone

    models.create_text_classifier("sentence-transformers/all-MiniLM-L6-v2", 2, offline=True)
    models.create_text_encoder("sentence-transformers/all-MiniLM-L6-v2", offline=True)
    assert hub_lookups == [], f"an offline model load looked up {hub_lookups}"


def test_a_new_backbone_family_is_one_registry_entry(monkeypatch) -> None:
    """One StageMap makes stages, freeze, head_of, replace_head, feature_extractor and attach_head
    work on an architecture the package has never seen."""

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 8, 3, stride=2))
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.out = nn.Linear(8, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.out(self.pool(self.trunk(x)))

    def split(m: nn.Module) -> "OrderedDict[str, list[nn.Module]]":
        return OrderedDict(low=[m.trunk[0]], high=[m.trunk[1]], head=[m.out])

    monkeypatch.setattr(models, "STAGE_MAPS", [models.StageMap("toy", lambda m: isinstance(m, Toy), split, head="out"),
                                               *models.STAGE_MAPS])
    toy = models.replace_head(Toy(), 3)
    assert models.head_of(toy) is toy.out and toy.out.out_features == 3
    models.freeze(toy, until="low")
    assert [n for n, mods in models.stages(toy).items() if all(p.requires_grad for m in mods for p in m.parameters())] \
        == ["high", "head"]
    assert models.feature_extractor(toy)(torch.randn(1, 3, 16, 16)).shape == (1, 8)
    assert models.attach_head(toy, nn.Linear(8, 2))(torch.randn(1, 3, 16, 16)).shape == (1, 2)


def test_attach_head_on_a_mobilenet_v2_replaces_its_classifier_block() -> None:
    mnv2 = models.create_backbone("mobilenet_v2", pretrained=False).model
    shipped = models.attach_head(mnv2, nn.Linear(1280, 3))
    assert shipped(torch.randn(1, 3, 64, 64)).shape == (1, 3) and models.head_of(shipped).out_features == 3
