"""GPU check of the real-model path: eval episodes/s, generated tokens/s of the episode engine against plain
Hugging Face `generate` (and `HFBackend`) at batch 64 and 512, SFT and PPO tokens/s in bf16 on a randomly
initialised Qwen2.5-0.5B-shaped model with a locally built ChatML tokenizer, and the spectral diagnostic on
7B-shaped matrices. Nothing is downloaded. Prints a table; `--out FILE.json` keeps the numbers with the card's
name.

    python benchmarks/gpu_check.py --out docs/gpu_results.json   # on a GPU (about 3-5 minutes on an H100)
    python benchmarks/gpu_check.py --smoke                         # tiny shapes on CPU: a correctness run

A random model never solves a problem and rarely emits its end-of-turn token, so every attempt runs to
max_new_tokens: the worst case. The tokenizer gives every filler token one character of its own, so a
completion's text re-tokenises to as many tokens as were generated and a revision prompt grows by the
completion's length, as with a real model (multi-character filler names made round-2 prompts 8x longer). SFT tokens are the tokens TRL counts (`num_tokens`); PPO completion tokens
are an upper bound (attempts x max_new_tokens). PPO runs with Accelerate bf16 autocast on fp32 weights (as
`rlheal rl` does); eval and SFT hold bf16 weights. GPU spans are timed between torch.cuda.synchronize calls.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import string
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

# (hidden, layers, heads, kv heads, intermediate, vocab, context) of Qwen2.5-0.5B-Instruct, and a tiny one.
QWEN_05B = dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2,
                intermediate_size=4864, vocab_size=151936, max_position_embeddings=32768)
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            intermediate_size=64, vocab_size=512, max_position_embeddings=4096)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
FULL = dict(eval_episodes=64, eval_attempts=2, eval_tokens=256, engine_batches=(64, 512), engine_tokens=256,
            hf_backend_batch=64, sft_steps=20, sft_batch=8, ppo_episodes=16, ppo_attempts=2, ppo_tokens=128,
            ppo_updates=2, spectral_layers=4, spectral_scale=1)
SMOKE = dict(eval_episodes=2, eval_attempts=2, eval_tokens=4, engine_batches=(2, 4), engine_tokens=4,
             hf_backend_batch=2, sft_steps=2, sft_batch=2, ppo_episodes=2, ppo_attempts=2, ppo_tokens=4,
             ppo_updates=1, spectral_layers=1, spectral_scale=64)


def filler_characters(n: int) -> list[str]:
    """`n` distinct single characters outside printable ASCII (no whitespace, surrogates or the private-use
    characters `chat_tokens` uses as stand-ins): one filler token each."""
    out, code = [], 0x100
    while len(out) < n:
        if not 0xD800 <= code <= 0xF8FF and not chr(code).isspace():
            out.append(chr(code))
        code += 1
    return out


def chatml_tokenizer(vocab_size: int):
    """A character-level ChatML tokenizer whose vocabulary is padded to `vocab_size` with one-character filler
    tokens, so every id a random model emits decodes to text that re-tokenises to the same ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tokens = specials + sorted(set(string.printable))
    tokens += filler_characters(vocab_size - len(tokens))
    core = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(tokens)}, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=specials[1:])
    tokenizer.chat_template = CHATML
    return tokenizer


def build_model(folder: Path, shape: dict, dtype) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from rlheal.models.checkpoint import Manifest, save_model

    tokenizer = chatml_tokenizer(shape["vocab_size"])
    config = Qwen2Config(**shape, tie_word_embeddings=True, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).to(dtype)
    return save_model(model, tokenizer, folder, Manifest(stage="base", step=0, seed=0))


def sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def timed(device: str, into: dict, key: str):
    """Seconds of the block, GPU work included (synchronised before and after)."""
    sync(device)
    start = time.perf_counter()
    yield
    sync(device)
    into[key] = time.perf_counter() - start


def check_eval(folder: Path, p: dict, device: str) -> dict:
    from rlheal.evaluate import eval_problems
    from rlheal.models.hf import describe, hf_loader
    from rlheal.rollout import Decoding, play
    from rlheal.tasks import get_task

    task = get_task("gp24", profile="paper")
    backend = hf_loader("auto", device=device, prompt_len=2048, new_tokens=p["eval_tokens"])(folder)
    problems = eval_problems(task, "ood", seed=0, episodes=p["eval_episodes"])
    decoding = Decoding(max_new_tokens=p["eval_tokens"])
    t: dict = {}
    with timed(device, t, "s"):
        played = play(task, problems, backend, max_attempts=p["eval_attempts"], decoding=decoding)
    generated = sum(len(g.completion_ids) for pe in played for g in pe.generations)
    by_attempt = [[len(pe.generations[a].prompt_ids) for pe in played if len(pe.generations) > a]
                  for a in range(p["eval_attempts"])]
    return {"episodes": len(played), "batch_size": backend.batch_size, **describe(backend.model),
            "seconds": round(t["s"], 3), "episodes_per_s": round(len(played) / t["s"], 3),
            "generated_tokens_per_s": round(generated / t["s"], 1),
            "mean_prompt_tokens_by_attempt": [round(sum(x) / len(x), 1) for x in by_attempt if x]}


def check_engine(folder: Path, p: dict, device: str) -> dict:
    """Generated tokens/s on the same gp24 paper prompts (greedy, `engine_tokens` new tokens each): plain
    `model.generate` on left-padded batches, the episode engine (on a GPU also with CUDA-graph decoding), and
    `HFBackend` at one batch size; and the shares of completions where the engine's tokens equal HFBackend's
    and the graphed engine's equal the eager one's."""
    import torch

    from rlheal.chat_tokens import encode_chat
    from rlheal.engine import EngineBackend
    from rlheal.evaluate import eval_problems
    from rlheal.models.hf import load_for_inference
    from rlheal.rollout import HFBackend
    from rlheal.tasks import get_task

    model, tokenizer = load_for_inference(folder, device=device)
    task = get_task("gp24", profile="paper")
    n = max(p["engine_batches"])
    chats = [[{"role": "user", "content": task.prompt(q)}] for q in eval_problems(task, "ood", seed=0, episodes=n)]
    new = p["engine_tokens"]
    report: dict = {"new_tokens": new, "prompt_tokens": len(encode_chat(tokenizer, chats[0]))}

    def plain(batch: list) -> int:
        prompts = [encode_chat(tokenizer, c) for c in batch]
        width = max(len(x) for x in prompts)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(x)) + x for x in prompts], device=model.device)
        mask = (torch.arange(width, device=model.device)[None] >= torch.tensor(
            [width - len(x) for x in prompts], device=model.device)[:, None]).long()
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new,
                                 do_sample=False, pad_token_id=tokenizer.pad_token_id)
        return int(out[:, width:].numel())

    def timed_rate(run) -> tuple[float, object]:
        t: dict = {}
        with timed(device, t, "s"):
            result = run()
        tokens = result if isinstance(result, int) else sum(len(g.completion_ids) for g in result)
        return round(tokens / t["s"], 1), result

    for batch_size in p["engine_batches"]:
        batch = chats[:batch_size]
        engine = EngineBackend(model, tokenizer, batch_size=batch_size, name="engine")
        timed_rate(lambda b=batch, e=engine: e.generate(b[:2], max_new_tokens=2, temperature=0, seed=0))  # warm-up
        plain_rate, _ = timed_rate(lambda b=batch: plain(b))
        engine_rate, engine_out = timed_rate(lambda b=batch, e=engine: e.generate(b, max_new_tokens=new,
                                                                                   temperature=0, seed=0))
        row = {"plain_generate_tokens_per_s": plain_rate, "engine_tokens_per_s": engine_rate}
        if device.startswith("cuda"):  # the same with CUDA-graph decoding (off by default until measured here)
            graphed = EngineBackend(model, tokenizer, batch_size=batch_size, name="engine", cuda_graphs=True)
            timed_rate(lambda b=batch, e=graphed: e.generate(b[:2], max_new_tokens=2, temperature=0, seed=0))
            graphs_rate, graphs_out = timed_rate(lambda b=batch, e=graphed: e.generate(
                b, max_new_tokens=new, temperature=0, seed=0))
            row["engine_cuda_graphs_tokens_per_s"] = graphs_rate
            row["cuda_graphs_on"] = bool(graphed.graphs and graphed.graphs.enabled)
            row["cuda_graphs_equal_eager"] = round(sum(a.completion_ids == b.completion_ids for a, b in zip(
                graphs_out, engine_out, strict=True)) / batch_size, 3)
            del graphed
        if batch_size == p["hf_backend_batch"]:
            hf_rate, hf_out = timed_rate(lambda b=batch, n=batch_size: HFBackend(model, tokenizer, batch_size=n)
                                         .generate(b, max_new_tokens=new, temperature=0, seed=0))
            row["hf_backend_tokens_per_s"] = hf_rate
            row["engine_equals_hf_backend"] = round(sum(
                a.completion_ids == b.completion_ids for a, b in zip(engine_out, hf_out, strict=True)) / batch_size, 3)
        report[f"batch_{batch_size}"] = row
        del engine
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
    return report


def check_sft(folder: Path, p: dict, device: str, out: Path) -> dict:
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from rlheal.models.checkpoint import load_model
    from rlheal.tasks import get_task
    from rlheal.train.sft import sft_examples

    bf16 = device.startswith("cuda")
    model, tokenizer = load_model(folder, dtype=torch.bfloat16 if bf16 else torch.float32)
    data = Dataset.from_list(sft_examples([get_task("gp24", profile="paper")], p["sft_steps"] * p["sft_batch"], 0))
    args = SFTConfig(output_dir=str(out / "sft"), max_steps=p["sft_steps"], per_device_train_batch_size=p["sft_batch"],
                     bf16=bf16, use_cpu=not bf16, save_strategy="no", report_to="none", logging_steps=1,
                     completion_only_loss=True, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=data)
    t: dict = {}
    with timed(device, t, "s"):
        trainer.train()
    tokens = max(int(float(h["num_tokens"])) for h in trainer.state.log_history if "num_tokens" in h)
    return {"steps": p["sft_steps"], "batch": p["sft_batch"], "dtype": "bfloat16" if bf16 else "float32",
            "tokens": tokens, "seconds": round(t["s"], 3), "tokens_per_s": round(tokens / t["s"], 1)}


def check_ppo(folder: Path, p: dict, device: str, out: Path) -> dict:
    from bench_rl import with_signal

    from rlheal.tasks import get_task
    from rlheal.train.ppo import PPOConfig, train_ppo

    if device.startswith("cuda"):
        os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16"
    config = PPOConfig(task="gp24", profile="paper", episodes_per_update=p["ppo_episodes"],
                       max_attempts=p["ppo_attempts"], max_new_tokens=p["ppo_tokens"], updates=p["ppo_updates"],
                       minibatch_size=16, rollout_batch_size=p["ppo_episodes"], save_every=10**6, temperature=1.0)
    result = train_ppo(folder, out / "rl", config, task=with_signal(get_task("gp24", profile="paper")),
                       show_progress=False)
    seconds = sum(r["seconds"] for r in result.rows)
    steps = sum(r["n_steps"] for r in result.rows)
    return {"updates": len(result.rows), "steps": steps, "autocast": os.environ.get("ACCELERATE_MIXED_PRECISION", "no"),
            "seconds": round(seconds, 3), "episodes_per_s": round(config.episodes_per_update * len(result.rows) / seconds, 3),
            "completion_tokens_per_s_upper": round(steps * config.max_new_tokens / seconds, 1)}


def check_spectral(p: dict, device: str) -> dict:
    import torch
    from spectral_checkpoints import drift_update, layer_shapes, reference_matrix

    from rlheal.spectral.linalg import decompose, resolve_k
    from rlheal.spectral.metrics import matrix_metrics

    dev = torch.device(device)
    scale, ks = p["spectral_scale"], (0.2,)
    shapes = layer_shapes(3584 // scale, 18944 // scale, 512 // scale)
    total = 0.0
    for layer in range(p["spectral_layers"]):
        for j, (name, (m, n)) in enumerate(shapes):
            W_ref = reference_matrix(m, n, 1000 * layer + j, dev).double()
            W_t = W_ref + 0.02 * drift_update(m, n, 10**6 + 1000 * layer + j, dev).double()
            kmax = resolve_k(ks[0], min(m, n), name)
            dec_ref = decompose(W_ref, "gram64", top=kmax, tail=kmax)  # what the reference cache holds
            t: dict = {}
            with timed(device, t, "s"):
                matrix_metrics(name, W_ref, dec_ref, W_t, decompose(W_t, "gram64", top=kmax, tail=kmax), ks)
            total += t["s"]
    per_layer = total / p["spectral_layers"]
    return {"shape": f"Qwen2.5-7B / {scale}", "layers_timed": p["spectral_layers"], "k": ks[0],
            "seconds_per_layer": round(per_layer, 3), "seconds_per_checkpoint_28_layers": round(28 * per_layer, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny shapes and counts (CPU, seconds)")
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cpu")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: eval,engine,sft,ppo,spectral")
    args = parser.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from rlheal.atomic import write_text
    from rlheal.models.hf import resolve_device

    device = resolve_device(args.device)
    p, shape = (SMOKE, TINY) if args.smoke else (FULL, QWEN_05B)
    skip = {s for s in args.skip.split(",") if s}
    report = {"card": torch.cuda.get_device_name(0) if device.startswith("cuda") else f"CPU {platform.machine()}",
              "device": device, "torch": torch.__version__, "smoke": args.smoke,
              "date": time.strftime("%Y-%m-%d"), "model_shape": shape, "settings": p}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = build_model(tmp / "model", shape, torch.bfloat16 if device.startswith("cuda") else torch.float32)
        parts = {"eval": lambda: check_eval(folder, p, device), "engine": lambda: check_engine(folder, p, device),
                 "sft": lambda: check_sft(folder, p, device, tmp),
                 "ppo": lambda: check_ppo(folder, p, device, tmp), "spectral": lambda: check_spectral(p, device)}
        for name, run in parts.items():
            if name not in skip:
                report[name] = run()
                Console(stderr=True).print(f"{name}: {report[name]}")
    table = Table(title=f"rlheal GPU check on {report['card']} ({'smoke' if args.smoke else 'Qwen2.5-0.5B shape'})")
    for col in ("part", "measure", "value"):
        table.add_column(col)
    for name, key in (("eval", "episodes_per_s"), ("eval", "generated_tokens_per_s"), ("sft", "tokens_per_s"),
                      ("ppo", "episodes_per_s"), ("ppo", "completion_tokens_per_s_upper"),
                      ("spectral", "seconds_per_checkpoint_28_layers")):
        if name in report:
            table.add_row(name, key, str(report[name][key]))
    for batch, rates in ((k, v) for k, v in report.get("engine", {}).items() if k.startswith("batch_")):
        for key, value in rates.items():
            table.add_row("engine", f"{batch} {key}", str(value))
    Console().print(table)
    if args.out:
        write_text(args.out, json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
