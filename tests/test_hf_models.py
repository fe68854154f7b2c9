"""Real-model helpers: memory arithmetic by hand, sharded-checkpoint hints, chat stops, and loading tiny models."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers import LlamaConfig, PretrainedConfig, Qwen2Config

from rlheal.models import hf
from rlheal.models.checkpoint import CheckpointError
from rlheal.models.hf import (
    GIB,
    ModelTooLargeError,
    check_fits,
    check_model_folder,
    count_parameters,
    end_of_turn_ids,
    kv_cache_bytes_per_token,
    load_for_inference,
    suggest_batch_size,
)

# The published shapes of Qwen2.5-0.5B and -7B (config.json of the Instruct models).
QWEN_05B = Qwen2Config(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                       intermediate_size=4864, vocab_size=151936)
QWEN_7B = Qwen2Config(hidden_size=3584, num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4,
                      intermediate_size=18944, vocab_size=152064)


def test_kv_cache_per_token_by_hand():
    assert kv_cache_bytes_per_token(QWEN_05B, 2) == 24 * 2 * 2 * 64 * 2 == 12_288
    assert kv_cache_bytes_per_token(QWEN_7B, 2) == 28 * 2 * 4 * 128 * 2 == 57_344
    no_gqa = LlamaConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=None)
    assert kv_cache_bytes_per_token(no_gqa, 4) == 3 * 2 * 4 * 16 * 4


def test_batch_size_by_hand():
    # 1 GiB free, 20 % kept back: 858_993_459 bytes; a chat of 1000 + 24 tokens takes 1024 x 12_288 bytes.
    assert suggest_batch_size(QWEN_05B, 1000, 24, GIB) == 858_993_459 // 12_582_912 == 68
    assert suggest_batch_size(QWEN_05B, 1000, 24, 80 * GIB) == 256  # capped
    assert suggest_batch_size(QWEN_05B, 1000, 24, 80 * GIB, max_batch=10_000) == 5461
    with pytest.raises(ModelTooLargeError, match="lower max_new_tokens"):
        suggest_batch_size(QWEN_7B, 30_000, 2000, GIB)


@given(st.integers(0, 4096), st.integers(1, 1024), st.integers(1, 10**12))
def test_batch_fits_and_one_more_does_not(prompt, new, free):
    per_chat = kv_cache_bytes_per_token(QWEN_7B) * (prompt + new)
    usable = int(free * 0.8)
    if usable < per_chat:
        with pytest.raises(ModelTooLargeError):
            suggest_batch_size(QWEN_7B, prompt, new, free, max_batch=10**9)
        return
    batch = suggest_batch_size(QWEN_7B, prompt, new, free, max_batch=10**9)
    assert batch * per_chat <= usable < (batch + 1) * per_chat


def test_weights_that_do_not_fit_get_advice():
    n = 7_615_616_512  # Qwen2.5-7B
    check_fits(n, 2, 80 * GIB)  # 14.2 GiB of bf16 weights on an 80 GiB card
    with pytest.raises(ModelTooLargeError) as err:
        check_fits(n, 4, 24 * GIB, where="cuda:0", name="Qwen2.5-7B")
    msg = str(err.value)
    assert "28.4 GiB" in msg and "24.0 GiB free" in msg
    assert "bfloat16" in msg and "device_map='auto'" in msg and "fsdp.yaml" in msg
    with pytest.raises(ModelTooLargeError) as err:
        check_fits(n, 2, 16 * GIB)
    assert "bfloat16" not in str(err.value)  # already half precision: not advised again


def test_sharded_training_states_name_their_merge_command(tmp_path):
    ds = tmp_path / "checkpoint-100"
    (ds / "global_step100").mkdir(parents=True)
    (ds / "global_step100" / "mp_rank_00_model_states.pt").write_bytes(b"")
    (ds / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"DeepSpeed ZeRO.*zero_to_fp32\.py .*--safe_serialization"):
        check_model_folder(ds)
    verl = tmp_path / "global_step_40"
    (verl / "actor").mkdir(parents=True)
    (verl / "actor" / "model_world_size_8_rank_0.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"verl.*verl\.model_merger merge --backend fsdp --local_dir .*actor"):
        check_model_folder(verl)
    fsdp = tmp_path / "fsdp"
    (fsdp / "pytorch_model_fsdp_0").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="accelerate merge-weights"):
        check_model_folder(fsdp)
    with pytest.raises(CheckpointError, match="does not exist"):
        check_model_folder(tmp_path / "missing")


def test_parameters_counted_from_headers(tiny_checkpoint):
    model, _ = load_for_inference(tiny_checkpoint, device="cpu")
    assert count_parameters(tiny_checkpoint) == sum(p.numel() for p in model.parameters())


def test_tiny_model_loads_for_chat_inference(tiny_checkpoint, tiny_tokenizer):
    model, tokenizer = load_for_inference(tiny_checkpoint)  # no GPU here: fp32 on CPU
    assert hf.describe(model)["dtype"] == "float32" and model.device.type == "cpu"
    assert model.config._attn_implementation == "sdpa"
    assert tokenizer.eos_token_id in model.generation_config.eos_token_id
    assert not model.training


def test_attention_falls_back_to_eager_for_unknown_architectures():
    class Unknown(PretrainedConfig):
        model_type = "unknown-rlheal"

    assert hf.attention_implementation(LlamaConfig()) == "sdpa"
    assert hf.attention_implementation(Unknown()) == "eager"


def test_chatml_end_of_turn_is_a_stop_token():
    from conftest import make_tiny_tokenizer

    chatml = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
              "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
    tokenizer = make_tiny_tokenizer(chatml)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    ids = end_of_turn_ids(tokenizer)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # found in the template itself
    assert tokenizer.eos_token_id in ids  # "</s>" is in the vocabulary too


def test_bad_models_get_clear_errors(tmp_path, make_tiny_checkpoint, monkeypatch):
    from conftest import make_tiny_tokenizer

    plain = make_tiny_checkpoint(tmp_path / "base", tokenizer=make_tiny_tokenizer(chat_template=None))
    with pytest.raises(CheckpointError, match="no chat template.*-Instruct variant"):
        load_for_inference(plain)
    monkeypatch.setattr(hf, "free_memory", lambda device: 1000)
    with pytest.raises(ModelTooLargeError, match="has 0.00 B parameters"):
        load_for_inference(make_tiny_checkpoint(tmp_path / "chat"))


@pytest.mark.slow
def test_evaluation_through_hf_loader_equals_the_default_loader(tmp_path, tiny_checkpoint, echo_task):
    from rlheal.evaluate import evaluate, hf_backend_loader
    from rlheal.rollout import Decoding
    from rlheal.store import Store

    settings = dict(episodes=4, max_attempts=2, decoding=Decoding(max_new_tokens=5), show_progress=False)
    ours = evaluate(Store(tmp_path / "a"), [tiny_checkpoint], [echo_task], load_backend=hf.hf_loader(4), **settings)
    default = evaluate(Store(tmp_path / "b"), [tiny_checkpoint], [echo_task], load_backend=hf_backend_loader(4),
                       **settings)
    strip = [{k: v for k, v in r.items() if k != "created"} for r in default]
    assert [{k: v for k, v in r.items() if k != "created"} for r in ours] == strip
    auto = hf.hf_loader("auto", new_tokens=5)(tiny_checkpoint)
    assert 1 <= auto.batch_size <= 256


def test_gpu_check_filler_tokens_decode_to_text_that_retokenises_to_them():
    import random
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from gpu_check import chatml_tokenizer

    tokenizer = chatml_tokenizer(5000)
    assert len(tokenizer) == 5000
    ids = random.Random(0).sample(range(len(tokenizer.all_special_ids), 5000), 300)
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert len(text) == 300 and tokenizer(text, add_special_tokens=False)["input_ids"] == ids


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_part_on_cpu(tmp_path):
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent.parent / "benchmarks" / "gpu_check.py"
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["smoke"] and report["device"] == "cpu"
    assert report["eval"]["episodes"] == 2 and report["eval"]["episodes_per_s"] > 0
    assert report["eval"]["dtype"] == "float32" and report["eval"]["attention"] == "sdpa"
    first, second = report["eval"]["mean_prompt_tokens_by_attempt"]  # a revision prompt grows by the completion
    assert first + 4 < second < first + 4 + 100  # (4 tokens) and its feedback turn
    engine = report["engine"]
    assert engine["batch_2"]["engine_equals_hf_backend"] == 1.0 and engine["batch_4"]["engine_tokens_per_s"] > 0
    assert report["sft"]["tokens"] > 0 and report["ppo"]["steps"] == 4  # 2 episodes x 2 attempts, never solved
    assert report["spectral"]["seconds_per_layer"] > 0
    assert "rlheal GPU check" in done.stdout
