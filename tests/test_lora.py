"""transfer_utils.lora (chapter 9): the hand-built LoRA layer starts at the pretrained function,
merges exactly, trains what peft trains, and computes what peft computes."""

from __future__ import annotations

import copy
import inspect
import re
from pathlib import Path

import nbformat
import peft
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import BertConfig, BertForSequenceClassification

from transfer_utils import lora
from transfer_utils.errors import ConfigError

CHAPTER = Path(__file__).resolve().parents[1] / "notebooks" / "09_parameter_efficient.ipynb"
IS_TRAINABLE = lambda name: name.endswith((".A", ".B")) or name.startswith("classifier")  # noqa: E731


def _tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=40, num_labels=2)
    return BertForSequenceClassification(cfg).eval()


def _batch() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 100, (3, 7), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _randomise_b(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lora.LoRALinear):
                m.B.copy_(torch.randn(m.B.shape, generator=g) * 0.1)


def test_zero_b_starts_exactly_at_the_pretrained_function() -> None:
    model = _tiny_bert()
    before = copy.deepcopy(model)
    wrapped = lora.add_lora(model, targets=("query", "value"), r=4, alpha=8)
    assert len(wrapped) == 4 and all(n.endswith((".query", ".value")) for n in wrapped)
    batch = _batch()
    with torch.no_grad():
        assert torch.equal(before(**batch).logits, model(**batch).logits)
    layer = next(m for m in model.modules() if isinstance(m, lora.LoRALinear))
    assert not layer.base.weight.requires_grad and layer.A.requires_grad and layer.B.requires_grad
    assert layer.scaling == 2.0 and torch.count_nonzero(layer.A) == layer.A.numel()


def test_merge_equals_unmerged_and_leaves_plain_linear_layers() -> None:
    model = _tiny_bert()
    n_before = sum(p.numel() for p in model.parameters())
    lora.add_lora(model, targets=("query", "value"), r=4, alpha=8)
    _randomise_b(model)
    batch = _batch()
    with torch.no_grad():
        unmerged = model(**batch).logits
    assert lora.merge_lora(model) == 4
    assert not any(isinstance(m, lora.LoRALinear) for m in model.modules())
    assert sum(p.numel() for p in model.parameters()) == n_before
    with torch.no_grad():
        merged = model(**batch).logits
    assert not torch.equal(merged, _tiny_bert()(**batch).logits)   # the update is really in the weights
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-6)


def test_merge_adds_lora_delta_to_the_weight() -> None:
    base = nn.Linear(6, 4)
    layer = lora.LoRALinear(base, r=2, alpha=16)
    with torch.no_grad():
        layer.B.normal_()
    expected = base.weight.detach() + 8.0 * layer.B.detach() @ layer.A.detach()
    holder = nn.Sequential(layer)
    lora.merge_lora(holder)
    torch.testing.assert_close(holder[0].weight, expected)
    torch.testing.assert_close(lora.lora_delta(layer.A, layer.B, 16, 2), 8.0 * layer.B @ layer.A)


@pytest.mark.parametrize("r,targets", [(4, ["query", "value"]), (1, ["query", "key", "value"])])
def test_trainable_count_equals_peft(r: int, targets: list[str]) -> None:
    hand = _tiny_bert()
    lora.add_lora(hand, targets=targets, r=r, alpha=2 * r)
    n_hand = lora.train_only(hand, IS_TRAINABLE)
    library = peft.get_peft_model(_tiny_bert(), peft.LoraConfig(task_type="SEQ_CLS", r=r, lora_alpha=2 * r,
                                                                 target_modules=targets))
    assert n_hand == lora.count_trainable(library) == library.get_nb_trainable_parameters()[0]
    assert n_hand == len(targets) * 2 * r * (32 + 32) + 32 * 2 + 2


def test_hand_layer_computes_what_peft_computes() -> None:
    """With peft's A and B copied in, the hand-built model's logits are peft's."""
    library = peft.get_peft_model(_tiny_bert(), peft.LoraConfig(task_type="SEQ_CLS", r=4, lora_alpha=8,
                                                                 target_modules=["query", "value"])).eval()
    hand = _tiny_bert()
    lora.add_lora(hand, targets=("query", "value"), r=4, alpha=8)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, module in hand.named_modules():
            if isinstance(module, lora.LoRALinear):
                theirs = library.get_submodule(f"base_model.model.{name}")
                theirs.lora_B["default"].weight.copy_(torch.randn(theirs.lora_B["default"].weight.shape, generator=g))
                module.A.copy_(theirs.lora_A["default"].weight)
                module.B.copy_(theirs.lora_B["default"].weight)
        hand.classifier.load_state_dict(library.base_model.model.classifier.modules_to_save["default"].state_dict())
        batch = _batch()
        torch.testing.assert_close(hand(**batch).logits, library(**batch).logits, rtol=1e-5, atol=1e-6)


def test_add_lora_names_the_fix_when_nothing_matches() -> None:
    with pytest.raises(ConfigError, match="named_modules"):
        lora.add_lora(_tiny_bert(), targets=("q_proj",))


def test_save_trainable_writes_only_the_trainable_tensors(tmp_path: Path) -> None:
    model = _tiny_bert()
    lora.add_lora(model, r=2, alpha=4)
    lora.train_only(model, IS_TRAINABLE)
    size = lora.save_trainable(model, tmp_path / "a.safetensors")
    saved = load_file(str(tmp_path / "a.safetensors"))
    assert size == (tmp_path / "a.safetensors").stat().st_size
    assert sum(t.numel() for t in saved.values()) == lora.count_trainable(model)
    assert all(k.endswith((".A", ".B")) or k.startswith("classifier") for k in saved)


def test_step_memory_counts_state_and_leaves_the_model_alone() -> None:
    full = _tiny_bert()
    batch, labels = _batch(), torch.tensor([0, 1, 1])
    reference = {k: v.clone() for k, v in full.state_dict().items()}
    m_full = lora.step_memory(full, batch, labels)
    assert all(torch.equal(v, full.state_dict()[k]) for k, v in reference.items())
    n = sum(p.numel() for p in full.parameters())
    assert m_full.weights == m_full.gradients == 4 * n and m_full.optimizer == 8 * n
    assert m_full.activations > 0 and m_full.total == 16 * n + m_full.activations
    assert m_full.cuda_peak is None                          # only measured on a CUDA device
    adapted = _tiny_bert()
    lora.add_lora(adapted, r=2, alpha=4)
    n_train = lora.train_only(adapted, IS_TRAINABLE)
    m_lora = lora.step_memory(adapted, batch, labels)
    assert m_lora.gradients == 4 * n_train and m_lora.optimizer == 8 * n_train
    assert m_lora.activations > 0.5 * m_full.activations     # the backward pass still runs through every layer


def test_the_chapter_builds_the_same_layer() -> None:
    """The chapter's visible LoRALinear cell is this module's class, character for character."""
    nb = nbformat.read(CHAPTER, as_version=4)
    cell = next(c.source for c in nb.cells if c.cell_type == "code" and "class LoRALinear" in c.source)
    assert inspect.getsource(lora.LoRALinear).strip() == cell.strip()
    assert re.search(r"lora\.add_lora\(.*layer=LoRALinear\)", "\n".join(c.source for c in nb.cells))


def test_adapters_start_at_the_pretrained_function_and_sit_where_houlsby_put_them() -> None:
    model = _tiny_bert()
    with torch.no_grad():
        reference = model(**_batch()).logits
    wrapped = lora.add_adapters(model, bottleneck=4)
    # two per block: after the attention's output projection and after the feed-forward block's
    assert wrapped == [f"bert.encoder.layer.{i}.{where}.dense" for i in range(2) for where in ("attention.output", "output")]
    with torch.no_grad():
        assert torch.equal(model(**_batch()).logits, reference)           # up-projection at zero: the identity
    n = lora.train_only(model, lambda name: ".adapter." in name or name.startswith("classifier"))
    assert n == 4 * (2 * 32 * 4 + 4 + 32) + (32 * 2 + 2)                  # down + up per adapter, and the head
    assert all(not p.requires_grad for m in model.modules() if isinstance(m, lora.AdaptedLinear)
               for p in m.base.parameters())


def test_a_trained_adapter_changes_the_output_and_cannot_be_merged_as_lora_can() -> None:
    model = _tiny_bert()
    reference = copy.deepcopy(model)
    lora.add_adapters(model, bottleneck=4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, lora.Adapter):
                m.up.weight.normal_(std=0.1)
        assert not torch.allclose(model(**_batch()).logits, reference(**_batch()).logits)
    assert lora.merge_lora(model) == 0                                     # nothing LoRA-shaped to fold in


def test_add_adapters_names_the_fix_when_nothing_matches() -> None:
    with pytest.raises(ConfigError, match="named_modules"):
        lora.add_adapters(_tiny_bert(), targets=("o_proj",))


def test_nf4_round_trip_is_exact_on_the_levels_and_close_elsewhere() -> None:
    levels = lora.NF4_LEVELS.repeat(8)                                       # 128 values, each block's absmax is 1
    packed, absmax = lora.quantize_nf4(levels)
    assert packed.dtype == torch.uint8 and packed.numel() == 64 and absmax.numel() == 2
    assert torch.equal(lora.dequantize_nf4(packed, absmax, levels.shape), levels)
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(0))
    packed, absmax = lora.quantize_nf4(w)
    back = lora.dequantize_nf4(packed, absmax, w.shape)
    blocks = w.reshape(-1, 64)
    nearest = (blocks / blocks.abs().amax(1, keepdim=True)).unsqueeze(-1).sub(lora.NF4_LEVELS).abs().argmin(-1)
    assert torch.equal(back.reshape(-1, 64), lora.NF4_LEVELS[nearest] * blocks.abs().amax(1, keepdim=True))
    assert float((back - w).abs().mean() / w.abs().mean()) < 0.15
    with pytest.raises(ConfigError, match="divisible"):
        lora.quantize_nf4(torch.zeros(3, 7))


def test_nf4_round_trip_of_a_model_counts_4_5_bits_per_weight() -> None:
    model = _tiny_bert()
    encoder = model.bert.encoder
    before = {n: p.clone() for n, p in encoder.named_parameters()}
    fp32, nf4 = lora.nf4_round_trip_(encoder)
    linear = [m.weight for m in encoder.modules() if isinstance(m, nn.Linear)]
    n = sum(w.numel() for w in linear)
    assert fp32 == 4 * n and nf4 == n // 2 + 4 * (n // 64)                  # 4 bits + a 32-bit scale per 64
    changed = [name for name, p in encoder.named_parameters() if not torch.equal(p, before[name])]
    assert changed and all(name.endswith("weight") and "LayerNorm" not in name for name in changed)
