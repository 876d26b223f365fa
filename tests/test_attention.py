"""Length-dispatched attention (llmpipe.train.attention) computes what transformers' sdpa computes:
outputs and gradients, for plain causal rows, packed rows, padded rows, KV-cache decoding, and
grouped-query heads, on both sides of the short/long threshold."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

from llmpipe.speed import attention
from llmpipe.speed.attention import use_length_dispatched_attention


def _pair(family: str):
    torch.manual_seed(0)
    if family == "gpt2":
        config = GPT2Config(vocab_size=64, n_positions=256, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0, embd_pdrop=0, attn_pdrop=0)
        build = GPT2LMHeadModel
    else:  # grouped-query attention: 4 query heads share 2 key/value heads
        config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=256)
        build = LlamaForCausalLM
    reference, dispatched = build(config), build(config)
    dispatched.load_state_dict(reference.state_dict())
    reference.set_attn_implementation("sdpa")
    dispatched.set_attn_implementation("sdpa")
    use_length_dispatched_attention(dispatched)
    assert dispatched.config._attn_implementation == attention.NAME
    return reference, dispatched


def _inputs(kind: str, length: int) -> dict:
    ids = torch.randint(0, 64, (3, length))
    if kind == "packed":  # three documents per row, positions restarting at each
        cut = [length // 3, 2 * length // 3]
        positions = torch.cat([torch.arange(cut[0]), torch.arange(cut[1] - cut[0]), torch.arange(length - cut[1])])
        return {"input_ids": ids, "position_ids": positions.repeat(3, 1)}
    if kind == "padded":  # right- and left-padded rows
        mask = torch.ones(3, length, dtype=torch.long)
        mask[0, length // 2:] = 0
        mask[1, :3] = 0
        return {"input_ids": ids, "attention_mask": mask}
    return {"input_ids": ids}


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("kind", ["causal", "packed", "padded"])
@pytest.mark.parametrize("length", [24, attention.SHORT_ROWS + 40])
def test_same_outputs_and_gradients_as_sdpa(family, kind, length, monkeypatch):
    import transformers.integrations.sdpa_attention as sdpa_module

    reference, dispatched = _pair(family)
    sdpa_calls = []
    original = sdpa_module.sdpa_attention_forward
    monkeypatch.setattr(sdpa_module, "sdpa_attention_forward", lambda *a, **k: sdpa_calls.append(1) or original(*a, **k))
    inputs = _inputs(kind, length)
    logits = [model(**inputs, use_cache=False).logits for model in (reference, dispatched)]
    valid = inputs.get("attention_mask", torch.ones_like(inputs["input_ids"])).bool()
    torch.testing.assert_close(logits[1][valid], logits[0][valid], atol=1e-5, rtol=1e-4)
    for out in logits:
        out[valid].logsumexp(-1).sum().backward()
    for (name, a), (_, b) in zip(reference.named_parameters(), dispatched.named_parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-5, rtol=1e-4, msg=name)
    # The dispatched model ran the eager arithmetic on short rows and sdpa on long ones.
    assert bool(sdpa_calls) == (length > attention.SHORT_ROWS)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_generation_with_a_kv_cache_is_unchanged(family):
    reference, dispatched = _pair(family)
    prompt = torch.randint(0, 64, (2, 7))
    settings = {"max_new_tokens": 12, "do_sample": False, "pad_token_id": 0}
    assert torch.equal(dispatched.generate(prompt, **settings), reference.generate(prompt, **settings))


def test_other_implementations_are_left_alone():
    _, model = _pair("gpt2")
    model.set_attn_implementation("eager")
    use_length_dispatched_attention(model)
    assert model.config._attn_implementation == "eager"
    use_length_dispatched_attention("a/model-name")  # loaded later by the trainer: nothing to switch


def test_a_saved_checkpoint_does_not_record_it(tmp_path):
    _, model = _pair("gpt2")
    model.save_pretrained(tmp_path)
    assert attention.NAME not in (tmp_path / "config.json").read_text()


def test_every_stage_trainer_on_cpu_gets_it(tmp_path):
    from transformers import Trainer, TrainingArguments

    from llmpipe.train.fit import build_trainer

    _, model = _pair("gpt2")
    model.set_attn_implementation("sdpa")
    build_trainer(Trainer, model=model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to=[]))
    assert model.config._attn_implementation == attention.NAME
