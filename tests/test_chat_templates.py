"""Assistant-only loss for the chat templates users bring (ChatML, Llama 3, Mistral, Gemma, Phi-3) and
llmpipe's own: the tokens that carry loss are exactly each reply and its end-of-turn token, in the mask
(llmpipe.chat_format.assistant_mask), in SFT's batches (TRL's preparation, then llmpipe's packing) and
in DPO's / KTO's prompt-completion split; a base without a template gets llmpipe's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hf_models import SPECIALS, TEMPLATES, make_model_folder, make_tokenizer, model_config

from llmpipe.chat_format import (
    END_OF_TURN,
    assistant_mask,
    end_of_turn_token,
    ensure_chat_template,
    load_chat_tokenizer,
    resize_for_tokenizer,
    set_generation_stops,
)
from llmpipe.core.errors import UserError

FAMILIES = ["chatml", "llama3", "mistral", "gemma", "phi3", "llmpipe"]
REPLIES = ["The kettle is blue.", "The cup is red."]
CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What colour is the kettle?"},
    {"role": "assistant", "content": REPLIES[0]},
    {"role": "user", "content": "And the cup?"},
    {"role": "assistant", "content": REPLIES[1]},
]
OTHER = [{"role": "user", "content": "Is the lamp red?"}, {"role": "assistant", "content": "The lamp is red."}]


@pytest.fixture(scope="module")
def llmpipe_tokenizer():
    from llmpipe.stages.tokenizer import train_tokenizer

    return train_tokenizer(["The kettle is blue. The cup is red. What colour is the lamp?"] * 40, vocab_size=400, min_frequency=1)


def tokenizer_of(family: str, llmpipe_tokenizer):
    return llmpipe_tokenizer if family == "llmpipe" else make_tokenizer(family)


def end_of(family: str) -> str:
    return END_OF_TURN if family == "llmpipe" else SPECIALS[family]["end_of_turn"]


def loss_runs(tokenizer, ids, mask) -> list[str]:
    """The decoded runs of consecutive tokens that carry loss."""
    runs, run = [], []
    for token, m in zip(list(ids) + [None], list(mask) + [0]):
        if m:
            run.append(token)
        elif run:
            runs.append(tokenizer.decode(run))
            run = []
    return runs


def expected_runs(family: str, replies: list[str]) -> list[str]:
    # Mistral writes `[/INST] reply</s>`: the space belongs to the reply the model writes after `[/INST]`.
    space = " " if family == "mistral" else ""
    return [space + reply + end_of(family) for reply in replies]


@pytest.mark.parametrize("family", FAMILIES)
def test_mask_is_each_reply_with_its_end_of_turn_token(family, llmpipe_tokenizer):
    tokenizer = tokenizer_of(family, llmpipe_tokenizer)
    ids, mask = assistant_mask(tokenizer, CHAT)
    assert loss_runs(tokenizer, ids, mask) == expected_runs(family, REPLIES)
    # The same tokens as the template's own tokenization, bos written once (by the template, if at all).
    assert ids == tokenizer.apply_chat_template(CHAT, tokenize=True, return_dict=False)
    assert ids.count(tokenizer.bos_token_id) == (1 if tokenizer.bos_token_id is not None else 0)
    hidden = tokenizer.decode([t for t, m in zip(ids, mask) if not m])
    assert "What colour" in hidden and "And the cup?" in hidden and "blue" not in hidden
    assert not hidden.endswith(end_of(family))  # the last reply's end-of-turn token carries loss


@pytest.mark.parametrize("family", FAMILIES)
def test_end_of_turn_token_is_read_from_the_template_and_stops_generation(family, llmpipe_tokenizer):
    from transformers import AutoModelForCausalLM

    tokenizer = tokenizer_of(family, llmpipe_tokenizer)
    assert end_of_turn_token(tokenizer) == end_of(family)
    if family == "llmpipe":
        return
    model = AutoModelForCausalLM.from_config(model_config("llama", tokenizer))
    set_generation_stops(model, tokenizer)
    end = tokenizer.convert_tokens_to_ids(end_of(family))
    assert model.generation_config.eos_token_id == list(dict.fromkeys([end, tokenizer.eos_token_id]))
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id


def test_a_template_without_a_reply_token_falls_back_to_eos():
    tokenizer = make_tokenizer("chatml")
    tokenizer.chat_template = "{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
    assert end_of_turn_token(tokenizer) == tokenizer.eos_token


def test_a_template_that_is_not_prefix_preserving_is_a_one_line_error(tmp_path: Path):
    # The generation prompt opens a turn the rendered reply does not start with: no reply span exists.
    tokenizer = make_tokenizer("chatml")
    tokenizer.chat_template = TEMPLATES["chatml"].replace("<|im_start|>assistant", "<|im_start|>model")
    tokenizer.save_pretrained(tmp_path)
    with pytest.raises(UserError) as raised:
        load_chat_tokenizer(tmp_path)
    message = str(raised.value)
    assert "\n" not in message and "prefix-preserving" in message
    assert message.startswith(f'{tmp_path / "chat_template.jinja"}: "chat_template" ')


def test_a_template_that_refuses_a_role_is_a_one_line_error():
    tokenizer = make_tokenizer("chatml")
    tokenizer.chat_template = ("{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
                               "{% endif %}" + TEMPLATES["chatml"])
    assert loss_runs(tokenizer, *assistant_mask(tokenizer, CHAT[1:])) == expected_runs("chatml", REPLIES)
    with pytest.raises(UserError, match="System role not supported") as raised:
        assistant_mask(tokenizer, CHAT)
    assert "\n" not in str(raised.value)


def test_a_conversation_opening_with_the_reply_is_a_one_line_error_without_markers(llmpipe_tokenizer):
    opening = [{"role": "assistant", "content": "Hello."}, *OTHER]
    assert loss_runs(llmpipe_tokenizer, *assistant_mask(llmpipe_tokenizer, opening))[0] == "Hello.<|end|>"
    with pytest.raises(UserError, match="starts with the assistant's reply"):
        assistant_mask(make_tokenizer("chatml"), opening)


def test_load_chat_tokenizer_takes_any_family_and_refuses_none(tmp_path: Path):
    for family in ("chatml", "mistral"):
        folder = tmp_path / family
        tokenizer = make_tokenizer(family)
        tokenizer.pad_token = None  # Llama 3's and many hub tokenizers have none: pad with eos
        tokenizer.save_pretrained(folder)
        loaded = load_chat_tokenizer(folder)
        assert loaded.pad_token == loaded.eos_token
    make_tokenizer("none").save_pretrained(tmp_path / "none")
    with pytest.raises(UserError, match="tokenizer has no chat template — .*base stage"):
        load_chat_tokenizer(tmp_path / "none")


def test_a_base_without_a_template_gets_llmpipes_with_its_tokens_and_resized_embeddings(tmp_path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = make_model_folder(tmp_path / "base", "llama", "none")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    before = len(tokenizer)
    added = ensure_chat_template(tokenizer)
    assert added["chat_template"] == "llmpipe" and added["pad_token"] == "<|pad|>"
    assert set(added["added_tokens"]) == {"<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<|pad|>"}
    assert added["vocab_size"] == len(tokenizer) == before + 5
    assert ensure_chat_template(tokenizer) == {}  # a template is there now: nothing more to add
    assert resize_for_tokenizer(model, tokenizer) == len(tokenizer)
    assert model.get_input_embeddings().weight.shape[0] == len(tokenizer)
    assert model.get_output_embeddings().weight.shape[0] == len(tokenizer)
    assert resize_for_tokenizer(model, tokenizer) is None
    assert model.generation_config.eos_token_id == [tokenizer.convert_tokens_to_ids("<|end|>"), tokenizer.eos_token_id]
    assert model.config.pad_token_id == tokenizer.pad_token_id
    ids, mask = assistant_mask(tokenizer, CHAT)
    assert loss_runs(tokenizer, ids, mask) == expected_runs("llmpipe", REPLIES)
    for token in ("<|user|>", "<|assistant|>", "<|end|>"):  # each one token, not spelled out in bytes
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids(token)]
    # The resized model runs on the new tokens, and the saved tokenizer round-trips with them.
    model(input_ids=torch.tensor([ids]))
    tokenizer.save_pretrained(tmp_path / "saved")
    assert load_chat_tokenizer(tmp_path / "saved").chat_template == tokenizer.chat_template


def sft_trainer(tokenizer, tmp_path: Path, packing: bool, rows: list[list[dict[str, str]]], data=None):
    """SFTTrainer as the SFT stage builds it (its dataset, unless `data`, and arguments; llmpipe.speed.fast_trainer)."""
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    from llmpipe.config import load_recipe
    from llmpipe.runs import StageWriter
    from llmpipe.speed import fast_trainer
    from llmpipe.stages.sft import chat_dataset, sft_arguments

    recipe = load_recipe(None, ["model=micro", "device=cpu", f"sft.packing={str(packing).lower()}", "sft.max_length=128"])
    writer = StageWriter(tmp_path, "sft", recipe.stage_config("sft"))
    model = AutoModelForCausalLM.from_config(model_config("llama", tokenizer))
    data = data or chat_dataset(tokenizer, [{"messages": m} for m in rows], 128)[0]
    return fast_trainer(SFTTrainer, "packed_chat" if packing else "plain", tokenizer, 128, model=model,
                        args=sft_arguments(recipe, writer, marked="messages" in data.column_names),
                        train_dataset=data, eval_dataset=data, processing_class=tokenizer)


@pytest.mark.parametrize("family,packing", [("chatml", True), ("llama3", True), ("chatml", False)])
def test_sft_batches_carry_loss_on_replies_only(family, packing, tmp_path: Path):
    tokenizer = make_tokenizer(family)
    trainer = sft_trainer(tokenizer, tmp_path, packing, [CHAT, OTHER])
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator(rows)
    ids, labels = batch["input_ids"].flatten().tolist(), batch["labels"].flatten().tolist()
    assert all(label in (-100, token) for token, label in zip(ids, labels))
    learned = loss_runs(tokenizer, ids, [label != -100 for label in labels])
    assert sorted(learned) == sorted(expected_runs(family, [*REPLIES, "The lamp is red."]))
    if packing:  # two conversations, each its own document (positions restart), in llmpipe's packed blocks
        starts = (batch["position_ids"] == 0) & (batch["input_ids"] != tokenizer.pad_token_id)
        assert starts.sum() == 2


def test_llmpipes_template_trains_on_the_same_labels_either_way(llmpipe_tokenizer, tmp_path: Path):
    """TRL masks llmpipe's marked template itself; the pre-tokenized path (templates without markers) gives
    the same rows, so every family is trained the same way."""
    from datasets import Dataset

    marked = sft_trainer(llmpipe_tokenizer, tmp_path / "a", False, [CHAT, OTHER]).train_dataset
    tokenized = Dataset.from_list([dict(zip(("input_ids", "assistant_masks"), assistant_mask(llmpipe_tokenizer, m)))
                                   for m in (CHAT, OTHER)])
    plain = sft_trainer(llmpipe_tokenizer, tmp_path / "b", False, [], data=tokenized).train_dataset
    assert sorted((r["input_ids"], r["labels"]) for r in marked) == sorted((r["input_ids"], r["labels"]) for r in plain)


@pytest.mark.parametrize("family", ["chatml", "llama3", "mistral", "gemma", "phi3"])
def test_dpo_splits_prompt_and_completion_at_the_reply(family, tmp_path: Path):
    """TRL's DPO renders prompt and prompt + reply itself: the split holds for a default system prompt
    (ChatML), no generation prompt (Mistral) and a system message folded into the user turn (Gemma)."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    folder = make_model_folder(tmp_path / "model", "llama", family)
    tokenizer = load_chat_tokenizer(folder)
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    prompt = CHAT[:4]
    row = {"prompt": prompt, "chosen": [{"role": "assistant", "content": "The cup is red."}],
           "rejected": [{"role": "assistant", "content": "The cup is blue."}]}
    args = DPOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, max_length=256, report_to=[],
                     precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=model, args=args, train_dataset=Dataset.from_list([row]), processing_class=tokenizer)
    prepared = trainer.train_dataset[0]
    assert tokenizer.decode(prepared["prompt_ids"]) == tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    # The completion is the reply and its end-of-turn token (and the newline some templates write after it).
    assert tokenizer.decode(prepared["chosen_ids"]).rstrip() == expected_runs(family, ["The cup is red."])[0]
    assert tokenizer.decode(prepared["rejected_ids"]).rstrip() == expected_runs(family, ["The cup is blue."])[0]


def test_kto_splits_prompt_and_completion_at_the_reply(tmp_path: Path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import KTOConfig, KTOTrainer

    folder = make_model_folder(tmp_path / "model", "llama", "mistral")
    tokenizer = load_chat_tokenizer(folder)
    rows = [{"prompt": CHAT[:4], "completion": [{"role": "assistant", "content": reply}], "label": good}
            for reply, good in (("The cup is red.", True), ("The cup is blue.", False))]
    args = KTOConfig(output_dir=str(tmp_path / "out"), use_cpu=True, bf16=False, max_length=256, report_to=[],
                     per_device_train_batch_size=2, precompute_ref_log_probs=False)
    trainer = KTOTrainer(model=AutoModelForCausalLM.from_pretrained(folder), args=args,
                         train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    prepared = trainer.train_dataset[0]
    assert tokenizer.decode(prepared["prompt_ids"]) == tokenizer.apply_chat_template(CHAT[:4], tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(prepared["completion_ids"]) in expected_runs("mistral", ["The cup is red.", "The cup is blue."])


def test_sft_stage_trains_a_foreign_chatml_model(tmp_path: Path):
    """The SFT stage's own train() on a tiny GPT-2 with a ChatML template, as a hub download looks (the
    parent the base stage will give it): trains, and saves a model that stops at <|im_end|> with the
    template unchanged. (GPT-2: the MFU count of llmpipe.models reads GPT-2 config keys.)"""
    from llmpipe.config import load_recipe
    from llmpipe.registry import stage_spec
    from llmpipe.runs import StageWriter
    from llmpipe.runs.context import StageContext
    from llmpipe.stages import sft

    parent = make_model_folder(tmp_path / "base", "gpt2", "chatml")
    # max_length 256: this tokenizer of a few hundred tokens spells the replies out nearly byte by byte.
    recipe = load_recipe("recipes/micro.yaml", [
        "device=cpu", "sft.max_length=256", "sft.max_steps=2", "sft.eval_every=2", "sft.save_every=2", "sft.eval_batches=1",
        "sft.accuracy_rows=2", "sft.gate.action=off", "sft.probes=[]", "sft.sample_prompts=[]"])
    writer = StageWriter(tmp_path / "run", "sft", recipe.stage_config("sft"))  # the parent has no manifest yet
    ctx = StageContext(spec=stage_spec("sft"), recipe=recipe, writer=writer, parent_dir=parent)
    with writer:
        final = sft.train(ctx)
    manifest = json.loads((final / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["status"] == "complete" and manifest["metrics"]["validation_loss"] is not None
    assert (final / "chat_template.jinja").read_text(encoding="utf-8") == TEMPLATES["chatml"]
    generation = json.loads((final / "generation_config.json").read_text(encoding="utf-8"))
    tokenizer = load_chat_tokenizer(final)
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") in generation["eos_token_id"]


@pytest.mark.parametrize("family", ["mistral", "chatml"])
def test_eval_chat_and_data_check_work_on_foreign_templates(family, tmp_path: Path):
    """Held-out chat loss scores the masked tokens; generation prompts end where the reply starts (Mistral
    writes no generation prompt: `[/INST]`); preference scoring, chat's prompt and `data check` run."""
    from transformers import AutoModelForCausalLM

    from llmpipe.chat import encode_prompt
    from llmpipe.data.check import _render
    from llmpipe.eval.heldout import chat_loss
    from llmpipe.eval.metrics import answer_accuracy
    from llmpipe.eval.pairs import pair_measures, pair_scores

    folder = make_model_folder(tmp_path / "model", "llama", family)
    tokenizer = load_chat_tokenizer(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    set_generation_stops(model, tokenizer)
    rows = [{"messages": CHAT}, {"messages": OTHER, "answer": "red"}]
    scored = chat_loss(model, tokenizer, rows, max_length=256)
    # Every masked token is scored (none is the first of its sequence, which nothing predicts).
    assert scored["tokens"] == sum(sum(assistant_mask(tokenizer, r["messages"])[1]) for r in rows)
    prompt = encode_prompt(tokenizer, "Is the lamp red?", raw=False)
    rendered = tokenizer.decode(prompt)
    assert rendered.endswith("[/INST]" if family == "mistral" else "<|im_start|>assistant\n")
    assert answer_accuracy(model, tokenizer, rows, max_new_tokens=4)["rows"] == 1
    pair = {"prompt": CHAT[:4], "chosen": [{"role": "assistant", "content": "Red."}],
            "rejected": [{"role": "assistant", "content": "Blue."}]}
    scores = pair_scores(model, tokenizer, [pair])
    assert scores["chosen_tokens"][0] > 0 and scores["rejected_tokens"][0] > 0
    assert pair_measures(scores, scores, beta=0.1)["per_token_accuracy"] in (0.0, 0.5, 1.0)
    _, shown = _render("chat", {"messages": CHAT}, tokenizer)
    assert f"[[{expected_runs(family, REPLIES)[0]}]]" in shown


def test_conversations_with_no_reply_within_max_length_are_left_out():
    from llmpipe.stages.sft import chat_dataset

    tokenizer = make_tokenizer("chatml")
    short = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    long = [{"role": "user", "content": "the kettle is blue " * 40}, {"role": "assistant", "content": "yes"}]
    data, cut = chat_dataset(tokenizer, [{"messages": short}, {"messages": long}], 64)
    assert cut == 1 and len(data) == 1
    assert any(data[0]["assistant_masks"][:64])
