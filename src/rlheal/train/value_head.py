"""The PPO critic: an MLP h → h/4 → h/8 → 1 on the backbone's hidden state, saved as safetensors.

The head is stored next to an RL checkpoint as `value_head.safetensors`, so the folder stays a plain HF model
(transformers ignores the extra file) and RL can resume with its critic.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

VALUE_HEAD_FILE = "value_head.safetensors"


class ValueHead(nn.Module):
    """V(s) from a hidden state of size `hidden_size` (at least 8): Linear(h, h/4), GELU, Linear(h/4, h/8),
    GELU, Linear(h/8, 1). The last layer starts at zero, so every value starts at 0."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        if hidden_size < 8:
            raise ValueError(f"the value head needs a hidden size of at least 8 (h/8 units), got {hidden_size}")
        self.hidden_size = hidden_size
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, hidden_size // 4), nn.GELU(),
            nn.Linear(hidden_size // 4, hidden_size // 8), nn.GELU(),
            nn.Linear(hidden_size // 8, 1),
        )
        nn.init.zeros_(self.mlp[-1].weight)
        nn.init.zeros_(self.mlp[-1].bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., h) → (...,) values in float32 (the head computes in its own dtype)."""
        return self.mlp(hidden.to(self.mlp[0].weight.dtype)).squeeze(-1).float()


def save_value_head(head: ValueHead, folder: str | Path) -> Path:
    """Write the head's weights to `folder/value_head.safetensors` atomically; returns the file."""
    from safetensors.torch import save

    from rlheal.atomic import write_bytes

    path = Path(folder) / VALUE_HEAD_FILE
    tensors = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}
    write_bytes(path, save(tensors, metadata={"hidden_size": str(head.hidden_size)}))
    return path


def load_value_head(folder: str | Path, hidden_size: int) -> ValueHead:
    """The head saved in `folder`; raises FileNotFoundError / ValueError naming the file when it is missing
    or made for another hidden size."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(folder) / VALUE_HEAD_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: this checkpoint has no PPO value head to resume from")
    with safe_open(path, "pt") as fh:
        saved = int((fh.metadata() or {}).get("hidden_size", hidden_size))
    if saved != hidden_size:
        raise ValueError(f"{path} was made for hidden size {saved}, but the model has {hidden_size}")
    head = ValueHead(hidden_size)
    head.load_state_dict(load_file(path))
    return head
