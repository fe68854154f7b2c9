"""The pretraining loop of the built-in model: next-token loss on packed chat documents, on CPU, seeded.

Documents (lists of chat messages) are rendered with the tokenizer's chat template (which starts each one
with the bos token, exactly as prompts are rendered at inference), concatenated and cut into blocks of
`seq_len` tokens (the last partial block is dropped). Blocks are visited in a seeded order that is
reshuffled every epoch; AdamW with linear warmup and cosine decay to 10 % of the peak rate; gradient
clipping at 1. Same documents + spec + seed -> the same weights on CPU kernels of one kind: pretraining
always runs at `PRETRAIN_THREADS` torch threads, whatever the machine's core count or `OMP_NUM_THREADS`,
because the thread count changes the order of float sums and 3000 steps grow last-bit differences into a
different model (docs/BUILTIN_MODEL.md).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from pydantic import BaseModel, ConfigDict, Field

Messages = list[dict[str, str]]

# torch's CPU thread count while pretraining: torch's default on the 2-core development machine, at which the
# `builtin:det` base of docs/RESULTS.md §20-§25 was built (rebuilt bit for bit in §25). Changing it changes
# every base's weights.
PRETRAIN_THREADS = 2


class PretrainSpec(BaseModel):
    """Optimisation hyperparameters of pretraining."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int = Field(1500, ge=1, description="optimizer steps")
    batch_size: int = Field(8, ge=1, description="blocks per step")
    seq_len: int = Field(256, ge=8, description="tokens per block")
    lr: float = Field(3e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)


def pack_documents(documents: Sequence[Messages], tokenizer, seq_len: int) -> list[list[int]]:
    """Token blocks of exactly `seq_len` ids: the rendered documents, concatenated and cut."""
    stream: list[int] = []
    for messages in documents:
        stream.extend(tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False))
    n_blocks = len(stream) // seq_len
    if n_blocks == 0:
        raise ValueError(f"the corpus has {len(stream)} tokens, fewer than one block of {seq_len}")
    return [stream[i * seq_len:(i + 1) * seq_len] for i in range(n_blocks)]


def learning_rate(step: int, spec: PretrainSpec) -> float:
    """Linear warmup to `spec.lr`, then cosine decay to `spec.lr / 10` at the last step."""
    if step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    span = max(1, spec.steps - spec.warmup_steps)
    progress = min(1.0, (step - spec.warmup_steps) / span)
    return spec.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_order(n_blocks: int, spec: PretrainSpec, seed: int) -> list[list[int]]:
    """Block indices for every step: seeded permutations of all blocks, one after another."""
    rng = random.Random(seed)
    pool: list[int] = []
    batches = []
    for _ in range(spec.steps):
        batch = []
        while len(batch) < spec.batch_size:
            if not pool:
                pool = list(range(n_blocks))
                rng.shuffle(pool)
            batch.append(pool.pop())
        batches.append(batch)
    return batches


def pretrain(model, blocks: list[list[int]], spec: PretrainSpec, seed: int, progress: bool = True,
             on_step: Callable[[int, float], None] | None = None) -> list[float]:
    """Train `model` in place on `blocks` at `PRETRAIN_THREADS` torch threads (restored afterwards); returns
    the loss of every step (also passed to `on_step`)."""
    with _torch_threads(PRETRAIN_THREADS):
        return _pretrain(model, blocks, spec, seed, progress, on_step)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _pretrain(model, blocks: list[list[int]], spec: PretrainSpec, seed: int, progress: bool,
              on_step: Callable[[int, float], None] | None) -> list[float]:
    import torch

    from rlheal.progress import bar

    torch.manual_seed(seed)
    data = torch.tensor(blocks, dtype=torch.long)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": spec.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=spec.lr, betas=(0.9, 0.95),
    )
    model.train()
    losses: list[float] = []
    with bar("pretraining the built-in model", total=spec.steps, enabled=progress) as shown:
        for step, batch in enumerate(batch_order(len(blocks), spec, seed)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, spec)
            input_ids = data[batch]
            loss = model(input_ids=input_ids, labels=input_ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            if on_step:
                on_step(step, losses[-1])
            shown.advance(1, description=f"pretraining (loss {losses[-1]:.3f})")
    model.eval()
    return losses
