"""Shared fixtures: a tiny Hugging Face Llama checkpoint with a local character-level chat tokenizer.

Nothing is downloaded. For reuse by every room:

- `make_tiny_tokenizer()` (plain function, also the `tiny_tokenizer` fixture): a `PreTrainedTokenizerFast`
  with one token per printable ASCII character, special tokens `<pad>` `<s>` `</s>` `<unk>`, and a chat
  template `<s><|user|>\\n...</s>\\n<|assistant|>\\n...</s>\\n`. An assistant turn ends with `</s>` (eos).
- `make_tiny_checkpoint(folder, **options)` (the fixture of that name returns this function): saves a
  randomly initialised `LlamaForCausalLM` (hidden 32, 2 layers by default; any `LlamaConfig` field can be
  overridden, e.g. `max_position_embeddings=64`) plus the tokenizer and an rlheal manifest with
  `models/checkpoint.py: save_model`. Same `seed` -> same weights.
- `tiny_checkpoint`: one such checkpoint (stage "sft", step 0) built once per session; treat it as read-only;
  `tiny_model`: its (model, tokenizer), loaded once per test module.
- `one_torch_thread`: torch on one thread for the test (tiny models run fastest so on a shared machine).
- `EchoTask` (fixture `echo_task`): a minimal `Task` for engine tests: "Repeat the number N." is answered by
  the digits of N (ID: N < 1000, OOD: N >= 1000); digits that differ are a wrong value (reward -1), any
  other text is a format error (reward -3); 3 attempts.
"""

from __future__ import annotations

import random
import string
from pathlib import Path

import pytest

from rlheal.tasks.base import CORRECT, UNPARSEABLE, WRONG_VALUE, Problem, Task, Verdict

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def make_tiny_tokenizer(chat_template: str | None = CHAT_TEMPLATE):
    """A character-level fast tokenizer over printable ASCII, with bos/eos/pad/unk and a chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(SPECIAL_TOKENS.values())
    vocab = {tok: i for i, tok in enumerate(specials + sorted(set(string.printable)))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, **SPECIAL_TOKENS)
    tokenizer.chat_template = chat_template
    return tokenizer


def tiny_model_options(tokenizer) -> dict:
    """The config fields of the tests' tiny decoders (2 layers, hidden 32, 4 heads, 2 KV heads) for `tokenizer`."""
    return dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)


def make_tiny_checkpoint(folder, *, seed: int = 0, stage: str = "sft", step: int = 0, tokenizer=None,
                         **config_overrides) -> Path:
    """Save a random tiny Llama + tokenizer + manifest to `folder` (which must not exist); returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlheal.models.checkpoint import Manifest, save_model

    tokenizer = tokenizer if tokenizer is not None else make_tiny_tokenizer()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**tiny_model_options(tokenizer), **config_overrides})).eval()
    return save_model(model, tokenizer, folder, Manifest(stage=stage, step=step, seed=seed))


class EchoTask(Task):
    """Repeat a number: the smallest task that has splits, a verifier, format errors and revisions."""

    name = "echo"
    default_max_attempts = 3

    def draw(self, rng: random.Random, split: str) -> dict:
        low, high = (0, 999) if split == "id" else (1000, 9999)
        return {"number": rng.randint(low, high)}

    def holdout_key(self, data: dict) -> str:
        return f"echo:{data['number']}"

    def prompt(self, problem: Problem) -> str:
        return f"Repeat the number {problem.data['number']}."

    def answer(self, problem: Problem) -> str:
        return str(problem.data["number"])

    def verify(self, problem: Problem, text: str) -> Verdict:
        text = text.strip()
        if not text.isdigit():
            return Verdict(False, -3.0, UNPARSEABLE, "no number was found", format_ok=False)
        if text != self.answer(problem):
            return Verdict(False, -1.0, WRONG_VALUE, f"{text} is not the number", format_ok=True)
        return Verdict(True, 5.0, CORRECT, "", format_ok=True)


@pytest.fixture
def echo_task() -> EchoTask:
    return EchoTask()


@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


@pytest.fixture(name="make_tiny_checkpoint")
def make_tiny_checkpoint_fixture():
    """The `make_tiny_checkpoint(folder, **options)` builder (see the module docstring)."""
    return make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny Llama checkpoint folder shared by the session: do not modify it."""
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "sft-0")


@pytest.fixture(scope="module")
def tiny_model(tiny_checkpoint):
    """(model, tokenizer) of `tiny_checkpoint`, loaded once per test module: do not modify it."""
    from rlheal.models.checkpoint import load_model

    return load_model(tiny_checkpoint)


@pytest.fixture
def one_torch_thread():
    """Torch on one thread during the test; its thread count is restored after."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
