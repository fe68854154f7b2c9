import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from rlheal.models.builtin import TINY_RECIPE, BuiltinRecipe, ModelSpec, base_folder, builtin_base
from rlheal.models.checkpoint import MANIFEST, CheckpointError, load_model, read_manifest, weights_sha256
from rlheal.models.tokenizer import CHARACTERS, SPECIAL_TOKENS, char_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=CHARACTERS, max_size=80))
def test_tokenizer_round_trips_printable_ascii_one_token_per_character(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text
    if not any(special in text for special in SPECIAL_TOKENS):  # e.g. "<bos>" is read as the special token
        assert len(ids) == len(text)


def test_special_token_text_is_read_as_the_special_token(tokenizer):
    assert tokenizer("<bos>a<|end|>", add_special_tokens=False)["input_ids"] == [
        tokenizer.bos_token_id, tokenizer.convert_tokens_to_ids("a"), tokenizer.eos_token_id]


def test_all_characters_are_distinct_known_tokens(tokenizer):
    ids = tokenizer(CHARACTERS, add_special_tokens=False)["input_ids"]
    assert len(set(ids)) == len(CHARACTERS) and tokenizer.unk_token_id not in ids


def test_chat_template_renders_prompt_and_completion(tokenizer):
    prompt = [{"role": "user", "content": "cards: Kh 5d | make 24"}]
    full = [*prompt, {"role": "assistant", "content": "formula: 1+2"}]
    text = tokenizer.apply_chat_template(full, tokenize=False)
    assert text == "<bos><|user|>cards: Kh 5d | make 24<|end|><|assistant|>formula: 1+2<|end|>"
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False)
    full_ids = tokenizer.apply_chat_template(full, return_dict=False)
    assert full_ids[: len(prompt_ids)] == prompt_ids  # TRL's completion mask relies on this prefix
    assert tokenizer.decode(full_ids[len(prompt_ids):]) == "formula: 1+2<|end|>"
    assert full_ids[-1] == tokenizer.eos_token_id  # generation stops at the end of the assistant turn


def test_recipe_hash_tracks_every_field():
    base = TINY_RECIPE.hash()
    assert BuiltinRecipe.model_validate(TINY_RECIPE.model_dump()).hash() == base
    assert TINY_RECIPE.model_copy(update={"seed": 1}).hash() != base
    wider = TINY_RECIPE.model_copy(update={"model": ModelSpec(hidden_size=32, num_hidden_layers=1,
                                                              num_attention_heads=2, intermediate_size=32,
                                                              max_position_embeddings=128)})
    assert wider.hash() != base
    with_det_work = TINY_RECIPE.model_copy(update={"world": TINY_RECIPE.world.model_copy(update={"n_det_work": 1})})
    assert with_det_work.hash() != base


def test_base_command_names_the_valid_recipes_for_an_unknown_one():
    from typer.testing import CliRunner

    from rlheal.cli import app

    result = CliRunner().invoke(app, ["base", "--model", "builtin:huge"])
    assert result.exit_code == 2
    assert "unknown built-in model 'builtin:huge'" in result.output and "builtin:det" in result.output


@pytest.mark.slow
def test_base_command_shows_the_weights_sha256(tmp_path, monkeypatch):
    import hashlib

    from typer.testing import CliRunner

    from rlheal.cli import app

    monkeypatch.setenv("RLHEAL_CACHE", str(tmp_path))
    result = CliRunner().invoke(app, ["base", "--model", "builtin:tiny", "--quiet"])
    assert result.exit_code == 0, result.output
    folder = tmp_path / f"base-{TINY_RECIPE.hash()}"
    shown = json.loads(result.output[result.output.index("{"):])
    assert shown["weights_sha256"] == hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_tiny_base_builds_deterministically_and_is_cached(tmp_path):
    from safetensors.numpy import load_file

    first = builtin_base(TINY_RECIPE, progress=False, cache=tmp_path / "a")
    second = builtin_base(TINY_RECIPE, progress=False, cache=tmp_path / "b")
    assert first.name == second.name == f"base-{TINY_RECIPE.hash()}"
    w1, w2 = load_file(first / "model.safetensors"), load_file(second / "model.safetensors")
    assert w1.keys() == w2.keys() and all((w1[k] == w2[k]).all() for k in w1)
    assert weights_sha256(first) == weights_sha256(second)

    manifest = json.loads((first / MANIFEST).read_text())
    assert manifest["stage"] == "base" and manifest["config_hash"] == TINY_RECIPE.hash()
    assert manifest["extra"]["final_loss"] < manifest["extra"]["first_loss"]
    model, tok = load_model(first)
    assert model.config.vocab_size == len(tok) and tok.eos_token == "<|end|>"

    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert builtin_base(TINY_RECIPE, progress=False, cache=tmp_path / "a") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # cached: not rebuilt


def _pretrained_weights(caller_threads: int):
    """A 1-layer model of the built-in width after 5 steps on 16 random 64-token blocks, pretrained by a caller
    running at `caller_threads` torch threads; returns the weights and the caller's thread count afterwards."""
    import random

    from transformers import LlamaForCausalLM

    from rlheal.models.builtin import llama_config
    from rlheal.models.pretrain import PretrainSpec, pretrain

    before = torch.get_num_threads()
    torch.set_num_threads(caller_threads)
    try:
        torch.manual_seed(0)
        spec = ModelSpec(num_hidden_layers=1, max_position_embeddings=64)
        model = LlamaForCausalLM(llama_config(spec, char_tokenizer(model_max_length=64)))
        rng = random.Random(0)
        blocks = [[rng.randrange(5, 100) for _ in range(64)] for _ in range(16)]
        pretrain(model, blocks, PretrainSpec(steps=5, batch_size=16, seq_len=64, warmup_steps=1), seed=0,
                 progress=False)
        return {k: v.clone() for k, v in model.state_dict().items()}, torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


def test_pretraining_gives_the_same_weights_whatever_the_callers_thread_count():
    # At this width and batch, 1 and 2 unpinned threads give different last bits (measured, session 14):
    # pretraining pins PRETRAIN_THREADS, so a base does not depend on the machine's core count.
    one, threads_after_one = _pretrained_weights(1)
    three, threads_after_three = _pretrained_weights(3)
    assert (threads_after_one, threads_after_three) == (1, 3)  # the caller's setting is restored
    assert one.keys() == three.keys() and all(torch.equal(one[k], three[k]) for k in one)


def test_damaged_cache_is_reported_not_silently_replaced(tmp_path):
    folder = base_folder(TINY_RECIPE, tmp_path)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{broken")
    with pytest.raises(CheckpointError, match="rlheal base --rebuild"):
        builtin_base(TINY_RECIPE, progress=False, cache=tmp_path)
    assert (folder / "config.json").read_text() == "{broken"  # nothing was touched


def test_builtin_model_names_resolve_to_recipes(tmp_path, monkeypatch):
    from rlheal.train.sft import resolve_model

    monkeypatch.setenv("RLHEAL_CACHE", str(tmp_path))
    folder = base_folder(TINY_RECIPE, tmp_path)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")  # damaged on purpose: resolving reports it, never rebuilds it
    with pytest.raises(CheckpointError, match=f"base-{TINY_RECIPE.hash()}"):
        resolve_model("builtin:tiny", progress=False)
    valid = "valid: builtin:det, builtin:gp24, builtin:tiny"
    with pytest.raises(ValueError, match=f"unknown built-in model 'builtin:huge'; {valid}"):
        resolve_model("builtin:huge", progress=False)


@pytest.mark.parametrize("name", ["builtin:det", "builtin:gp24"])
def test_the_shipped_bases_are_used_as_they_are_and_match_their_pins(tmp_path, name):
    import hashlib

    from rlheal.models import builtin

    recipe = builtin.RECIPES[name]
    folder = builtin.builtin_base(recipe, progress=False, cache=tmp_path / "empty-cache")
    assert folder.parent == builtin.SHIPPED and not (tmp_path / "empty-cache").exists()  # nothing was built
    pinned = builtin.SHIPPED_SHA256[recipe.hash()]
    assert hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest() == pinned
    assert (folder / "model.safetensors").stat().st_size <= 5 * 2**20
    assert builtin.matches_shipped(recipe, folder) is True
    assert read_manifest(folder).config_hash == recipe.hash()


def test_an_altered_or_missing_shipped_base_is_refused(tmp_path, monkeypatch):
    import shutil

    from rlheal.models import builtin

    folder = builtin.builtin_base(builtin.DET_RECIPE, progress=False, cache=tmp_path / "empty-cache")
    assert builtin.matches_shipped(TINY_RECIPE, folder) is None  # no tiny base is shipped
    # an altered shipped base is refused, never used
    altered = tmp_path / "shipped"
    shutil.copytree(builtin.SHIPPED, altered)
    weights = altered / folder.name / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    monkeypatch.setattr(builtin, "SHIPPED", altered)
    with pytest.raises(CheckpointError, match="not the pinned"):
        builtin.builtin_base(builtin.DET_RECIPE, progress=False)
    shutil.rmtree(altered / folder.name)
    with pytest.raises(CheckpointError, match="is missing: reinstall"):
        builtin.builtin_base(builtin.DET_RECIPE, progress=False)
