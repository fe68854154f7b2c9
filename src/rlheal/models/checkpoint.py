"""Checkpoints are plain Hugging Face folders (config, safetensors, tokenizer) plus a small rlheal manifest.

This module finds checkpoints in folders, checks that they are whole, reads and writes manifests, and loads
and saves model + tokenizer with clear errors. Weights are only read from safetensors (never pickle).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rlheal.atomic import staged_dir, write_text
from rlheal.provenance import environment

MANIFEST = "rlheal_manifest.json"
_STEP_RE = re.compile(r"(?:checkpoint|step|global_step)[-_]?(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint folder that is missing, incomplete or unreadable; the message says what to do."""


@dataclass
class Manifest:
    """What made a checkpoint: stage (base, sft, rl, edit, external), step, parent folder, seed, config hash."""

    stage: str
    step: int
    parent: str | None = None
    seed: int | None = None
    config_hash: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=environment)

    @property
    def label(self) -> str:
        """A short human name: `extra["name"]` when given (edits), else `<stage>-<step>`."""
        return str(self.extra.get("name") or f"{self.stage}-{self.step}")


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    write_text(Path(folder) / MANIFEST, json.dumps(asdict(manifest), indent=2, sort_keys=True))


def read_manifest(folder: str | Path) -> Manifest:
    """The folder's manifest; for checkpoints written by other tools, one inferred from the folder name."""
    folder = Path(folder)
    path = folder / MANIFEST
    if path.exists():
        try:
            data = json.loads(path.read_text())
            return Manifest(**data)
        except (json.JSONDecodeError, TypeError) as exc:
            raise CheckpointError(f"{path} is not a valid rlheal manifest ({exc}); delete it to treat the "
                                  "folder as an external checkpoint") from exc
    match = _STEP_RE.search(folder.name)
    return Manifest(stage="external", step=int(match.group(1)) if match else 0)


def check_checkpoint(folder: str | Path) -> Path:
    """Raise CheckpointError unless `folder` holds a loadable HF model (config + safetensors weights)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist")
    if not (folder / "config.json").exists():
        raise CheckpointError(f"{folder} has no config.json: it is not a Hugging Face model folder")
    try:
        json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{folder / 'config.json'} is corrupt ({exc}); re-save or re-download it") from exc
    if not list(folder.glob("*.safetensors")):
        hint = " (found pickle .bin weights: convert them to safetensors first)" if list(folder.glob("*.bin")) else ""
        raise CheckpointError(f"{folder} has no .safetensors weights{hint}; sharded DeepSpeed/FSDP/verl "
                              "states must be merged into a HF folder first (e.g. zero_to_fp32.py, "
                              "`python -m verl.model_merger merge`)")
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            shards = set(json.loads(index.read_text())["weight_map"].values())
        except (json.JSONDecodeError, KeyError) as exc:
            raise CheckpointError(f"{index} is corrupt ({exc})") from exc
        missing = sorted(s for s in shards if not (folder / s).exists())
        if missing:
            raise CheckpointError(f"{folder} lacks weight shards {missing} named by its index")
    return folder


def weights_sha256(folder: str | Path) -> str:
    """sha256 (hex) of the folder's safetensors files, read in name order: for a one-file model it is what
    `sha256sum model.safetensors` prints. Equal digests mean bit-identical weights; two builds of one recipe on
    different CPUs or thread counts may differ (docs/BUILTIN_MODEL.md)."""
    folder = check_checkpoint(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 24), b""):
                digest.update(chunk)
    return digest.hexdigest()


def find_checkpoints(paths: list[str | Path]) -> list[Path]:
    """Expand each path into checkpoint folders: a checkpoint itself, or a folder whose sub-folders are ones.

    Sub-folders are ordered by manifest step (or the number in names like `checkpoint-120`).
    """
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if (path / "config.json").exists():
            found.append(path)
            continue
        if not path.is_dir():
            raise CheckpointError(f"{path} does not exist")
        subs = [p for p in path.iterdir() if p.is_dir() and (p / "config.json").exists()]
        if not subs:
            raise CheckpointError(f"{path} is neither a checkpoint (no config.json) nor a folder of checkpoints")
        found.extend(sorted(subs, key=lambda p: (read_manifest(p).step, p.name)))
    return found


def load_model(folder: str | Path, dtype: Any = None, device: str | None = None):
    """Load (model, tokenizer) from a checkpoint folder with safetensors only and no remote code."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = check_checkpoint(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types; re-raise with the folder named
        raise CheckpointError(f"cannot load the tokenizer of {folder}: {exc}") from exc
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype or torch.float32, use_safetensors=True, trust_remote_code=False
        )
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot load the model weights of {folder}: {exc}") from exc
    if device:
        model.to(device)
    model.eval()
    return model, tokenizer


def save_model(model, tokenizer, folder: str | Path, manifest: Manifest, overwrite: bool = False,
               state_dict: dict | None = None) -> Path:
    """Save model + tokenizer + manifest atomically: the folder appears complete or not at all.

    `state_dict` (optional) overrides the model's own weights, e.g. a full state dict gathered from a
    sharded (FSDP/DeepSpeed) model by `accelerator.get_state_dict`.
    """
    folder = Path(folder)
    with staged_dir(folder, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        tokenizer.save_pretrained(tmp)
        write_manifest(tmp, manifest)
    return folder
