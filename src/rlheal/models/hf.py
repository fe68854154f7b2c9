"""Real Hugging Face models: load for inference (dtype, attention, placement), size eval batches from free
memory, stop generation at the end of a chat turn, and say clearly when a model cannot be used as it is.

The arithmetic is pure and tested by hand (`kv_cache_bytes_per_token`, `suggest_batch_size`,
`weights_bytes`, `check_fits`); `load_for_inference` and `hf_loader` are the I/O edges. `hf_loader` plugs
into `rlheal.evaluate.evaluate(load_backend=...)`.
"""

from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path
from typing import Any

from rlheal.models.checkpoint import CheckpointError, check_checkpoint

GIB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# End-of-turn tokens of common chat templates (Qwen/ChatML, Llama 3, Phi, Gemma, Mistral/Llama 2).
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>")
HEADROOM = 0.2  # share of free memory kept back for activations, logits and allocator slack


class ModelTooLargeError(RuntimeError):
    """A model or batch that does not fit the memory it is given; the message says what to do."""


# --------------------------------------------------------------------------------------------------------------
# Pure arithmetic
# --------------------------------------------------------------------------------------------------------------
def _text_config(config: Any) -> Any:
    config = getattr(config, "config", config)  # a model or its config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def kv_shape(config: Any) -> tuple[int, int, int]:
    """(layers, kv_heads, head_dim) of the KV cache: `config` is a transformers config or a model; kv_heads
    defaults to the attention heads (no GQA) and head_dim to hidden_size / heads."""
    cfg = _text_config(config)
    heads = cfg.num_attention_heads
    kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return cfg.num_hidden_layers, kv_heads, head_dim


def kv_cache_bytes_per_token(config: Any, dtype_bytes: int = 2) -> int:
    """Bytes of KV cache one token takes: layers × 2 (K and V) × kv_heads × head_dim × dtype_bytes (`kv_shape`)."""
    layers, kv_heads, head_dim = kv_shape(config)
    return layers * 2 * kv_heads * head_dim * dtype_bytes


def suggest_batch_size(config: Any, prompt_len: int, new_tokens: int, free_bytes: int, *, dtype_bytes: int = 2,
                       headroom: float = HEADROOM, max_batch: int = 256) -> int:
    """The largest number of chats whose KV cache of `prompt_len + new_tokens` tokens fits in
    `free_bytes × (1 - headroom)`, capped at `max_batch`.

    Raises ModelTooLargeError when not even one chat fits.
    """
    if prompt_len < 0 or new_tokens < 1:
        raise ValueError(f"prompt_len must be >= 0 and new_tokens >= 1, got {prompt_len}, {new_tokens}")
    per_chat = kv_cache_bytes_per_token(config, dtype_bytes) * (prompt_len + new_tokens)
    batch = int(free_bytes * (1 - headroom)) // per_chat
    if batch < 1:
        raise ModelTooLargeError(
            f"one chat of {prompt_len} + {new_tokens} tokens needs {per_chat / GIB:.2f} GiB of KV cache but only "
            f"{free_bytes / GIB:.2f} GiB is free after loading the model: lower max_new_tokens, use the compact "
            "prompt profile, or free memory (another GPU, a smaller dtype)")
    return min(batch, max_batch)


def weights_bytes(n_params: int, dtype_bytes: int) -> int:
    return n_params * dtype_bytes


def check_fits(n_params: int, dtype_bytes: int, free_bytes: int, *, where: str = "the device",
               name: str = "the model", headroom: float = HEADROOM) -> None:
    """Raise ModelTooLargeError unless the weights take at most `(1 - headroom)` of `free_bytes`."""
    need = weights_bytes(n_params, dtype_bytes)
    if need <= free_bytes * (1 - headroom):
        return
    advice = []
    if dtype_bytes > 2:
        advice.append("load it in bfloat16 (dtype='bfloat16', half the memory)")
    advice += ["spread it over several GPUs with device_map='auto'",
               "train it sharded with `accelerate launch --config_file configs/accelerate/fsdp.yaml` "
               "(or deepspeed_zero3.yaml)",
               "or use a smaller model"]
    raise ModelTooLargeError(
        f"{name} has {n_params / 1e9:.2f} B parameters = {need / GIB:.1f} GiB in {dtype_bytes}-byte weights, "
        f"but {where} has {free_bytes / GIB:.1f} GiB free (and {headroom:.0%} is kept for activations): "
        + "; ".join(advice))


# --------------------------------------------------------------------------------------------------------------
# Checkpoint folders written by other trainers
# --------------------------------------------------------------------------------------------------------------
def sharded_checkpoint_hint(folder: str | Path) -> str | None:
    """The merge command for a sharded training state (DeepSpeed ZeRO, verl actor, FSDP), or None.

    Recognises: DeepSpeed (`zero_to_fp32.py` or `global_step*/` with `*model_states.pt`), verl
    (`actor/` or a folder of `model_world_size_*_rank_*.pt`), Accelerate FSDP (`pytorch_model_fsdp_*/`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return None
    out = f"{folder}-hf"
    actor = folder / "actor" if (folder / "actor").is_dir() else folder
    if list(actor.glob("model_world_size_*_rank_*.pt")) or (actor / "dist_ckpt").is_dir():
        backend = "megatron" if (actor / "dist_ckpt").is_dir() else "fsdp"
        return (f"{folder} is a sharded verl checkpoint: merge it into a Hugging Face folder with "
                f"`python -m verl.model_merger merge --backend {backend} --local_dir {actor} --target_dir {out}` "
                f"and use {out}")
    steps = sorted(p for p in folder.glob("global_step*") if p.is_dir())
    if (folder / "zero_to_fp32.py").exists() or any(list(s.glob("*model_states.pt")) for s in steps):
        return (f"{folder} is a sharded DeepSpeed ZeRO checkpoint: merge it with "
                f"`python {folder / 'zero_to_fp32.py'} {folder} {out} --safe_serialization`, copy config.json and "
                f"the tokenizer files of {folder} into {out}, and use {out}")
    fsdp = sorted(p for p in folder.glob("pytorch_model_fsdp_*") if p.is_dir())
    if fsdp:
        return (f"{folder} holds a sharded FSDP state ({fsdp[0].name}): merge it with "
                f"`accelerate merge-weights {fsdp[0]} {out}`, copy config.json and the tokenizer files into {out}, "
                f"and use {out}")
    return None


def check_model_folder(folder: str | Path) -> Path:
    """`check_checkpoint`, but a sharded training state gets an error naming the merge command to run."""
    try:
        return check_checkpoint(folder)
    except CheckpointError as exc:
        hint = sharded_checkpoint_hint(folder)
        if hint:
            raise CheckpointError(hint) from exc
        raise


def count_parameters(folder: str | Path) -> int:
    """Number of parameters in a checkpoint's safetensors files, from their headers (no weights are read)."""
    from safetensors import safe_open

    folder = check_model_folder(folder)
    index = folder / "model.safetensors.index.json"
    files = (sorted(set(json.loads(index.read_text())["weight_map"].values())) if index.exists()
             else sorted(p.name for p in folder.glob("*.safetensors")))
    total = 0
    for file in files:
        with safe_open(folder / file, framework="pt") as fh:
            for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                n = 1
                for dim in fh.get_slice(name).get_shape():
                    n *= dim
                total += n
    return total


# --------------------------------------------------------------------------------------------------------------
# Chat templates and stop tokens
# --------------------------------------------------------------------------------------------------------------
def check_chat_template(tokenizer: Any, name: str = "the model") -> None:
    """Raise CheckpointError when the tokenizer has no chat template (rlheal never guesses one)."""
    if not getattr(tokenizer, "chat_template", None):
        raise CheckpointError(
            f"the tokenizer of {name} has no chat template: use the chat/-Instruct variant of the model, or set "
            "`tokenizer.chat_template` (a Jinja string) and `tokenizer.save_pretrained(folder)` before "
            "evaluating; the paper profile is sent as chat turns")


def end_of_turn_ids(tokenizer: Any) -> list[int]:
    """Token ids that end an assistant turn: the special token the chat template writes right after the
    assistant's text, plus the known end-of-turn tokens present in the vocabulary."""
    marker = "RLHEALMARK"
    try:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": "u"}, {"role": "assistant", "content": marker}], tokenize=False)
    except Exception:  # noqa: BLE001 - a template that cannot render this chat: fall back to known names
        rendered = ""
    after = rendered.split(marker, 1)[1] if marker in rendered else ""
    specials = sorted(set(tokenizer.all_special_tokens) | set(tokenizer.get_added_vocab()), key=len, reverse=True)
    names = [next((s for s in specials if after.lstrip(" ").startswith(s)), None), *END_OF_TURN_TOKENS]
    vocab = tokenizer.get_vocab()
    ids = []
    for token in names:
        if token is not None and token in vocab and vocab[token] not in ids:
            ids.append(vocab[token])
    return ids


def add_chat_stops(model: Any, tokenizer: Any) -> list[int]:
    """Make generation stop at the end of an assistant turn: the end-of-turn ids join the model's
    `generation_config.eos_token_id` (which `HFBackend` stops at). Returns the new eos list."""
    eos = model.generation_config.eos_token_id
    current = list(eos) if isinstance(eos, list) else [] if eos is None else [eos]
    merged = current + [i for i in end_of_turn_ids(tokenizer) if i not in current]
    model.generation_config.eos_token_id = merged
    return merged


# --------------------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------------------
def resolve_device(device: str = "auto") -> str:
    """"auto" → this process's GPU (cuda:LOCAL_RANK under a launcher) when CUDA is available, else cpu."""
    import torch

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return "cpu"


def resolve_dtype(dtype: str, device: str) -> str:
    """"auto" → bfloat16 on a CUDA device that supports it, float16 on older GPUs, float32 on CPU."""
    import torch

    if dtype != "auto":
        if dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {dtype!r} is unknown; valid: auto, {', '.join(DTYPE_BYTES)}")
        return dtype
    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    return "float32"


def attention_implementation(config: Any) -> str:
    """"sdpa" when the model class supports torch's scaled-dot-product attention, else "eager"."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    model_class = MODEL_FOR_CAUSAL_LM_MAPPING.get(type(config), None)
    return "sdpa" if model_class is not None and getattr(model_class, "_supports_sdpa", False) else "eager"


def free_memory(device: str) -> int:
    """Free bytes on `device`: CUDA from the driver, CPU from /proc/meminfo (MemAvailable)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.mem_get_info(torch.device(device))[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def load_for_inference(folder: str | Path, device: str = "auto", dtype: str = "auto",
                       device_map: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a HF folder, ready for chat evaluation: bf16 on CUDA (fp32 on CPU), SDPA when the
    architecture has it, end-of-turn stop tokens added, eval mode.

    Checked before any weight is read: the folder is whole (a sharded DeepSpeed/verl/FSDP state gets the merge
    command), the tokenizer has a chat template, and the weights fit the free memory (device_map="auto"
    counts all visible GPUs). Safetensors only, never remote code.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder = check_model_folder(folder)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types; re-raise with the folder named
        raise CheckpointError(f"cannot load the tokenizer or config of {folder}: {exc}") from exc
    check_chat_template(tokenizer, str(folder))
    spread = device_map == "auto" and device.startswith("cuda")
    free = (sum(torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())) if spread
            else free_memory(device))
    check_fits(count_parameters(folder), DTYPE_BYTES[dtype], free, name=str(folder),
               where="all visible GPUs" if spread else device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=getattr(torch, dtype), attn_implementation=attention_implementation(config),
            device_map=device_map if spread else None, use_safetensors=True, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot load the model weights of {folder}: {exc}") from exc
    if not spread:
        model.to(device)
    model.eval()
    add_chat_stops(model, tokenizer)
    return model, tokenizer


def hf_loader(batch_size: int | str = "auto", *, device: str = "auto", dtype: str = "auto",
              device_map: str | None = None, prompt_len: int = 1024, new_tokens: int = 256,
              tokenizer: Any = None, backend: str = "engine"):
    """A `LoadBackend` for `rlheal.evaluate.evaluate(load_backend=...)` built on `load_for_inference`.

    batch_size "auto" sizes it from the memory free after loading, for chats of `prompt_len` prompt tokens
    plus `new_tokens` (budget the longest chat of the revision protocol). `tokenizer` overrides the folder's
    (e.g. a trainer checkpoint saved without one). `backend`: "engine" (the episode engine, `batch_size` slots;
    a model spread over several GPUs plays with Hugging Face generate) or "hf" (`rlheal.engine.model_backend`).
    """
    return partial(_load_backend, batch_size=batch_size, device=device, dtype=dtype, device_map=device_map,
                   prompt_len=prompt_len, new_tokens=new_tokens, tokenizer=tokenizer, backend=backend)


def _load_backend(folder: Path, *, batch_size: int | str, device: str, dtype: str, device_map: str | None,
                  prompt_len: int, new_tokens: int, tokenizer: Any, backend: str):
    from rlheal.engine import model_backend

    model, own_tokenizer = load_for_inference(folder, device=device, dtype=dtype, device_map=device_map)
    if tokenizer is not None:
        check_chat_template(tokenizer, str(folder))
        add_chat_stops(model, tokenizer)
    tokenizer = tokenizer if tokenizer is not None else own_tokenizer
    if batch_size == "auto":
        dev = str(model.device)
        batch_size = suggest_batch_size(model.config, prompt_len, new_tokens, free_memory(dev),
                                        dtype_bytes=model.dtype.itemsize)
    spread = len(set(getattr(model, "hf_device_map", {}).values())) > 1
    return model_backend(model, tokenizer, kind="hf" if spread else backend, batch_size=int(batch_size),
                         name=str(folder))


def describe(model: Any) -> dict[str, Any]:
    """A short record of how a model was loaded: dtype, device, attention, eos ids."""
    return {"dtype": str(model.dtype).removeprefix("torch."), "device": str(model.device),
            "attention": getattr(model.config, "_attn_implementation", None),
            "eos": model.generation_config.eos_token_id}

