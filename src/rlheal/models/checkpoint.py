"""Checkpoints are plain Hugging Face folders (config, safetensors, tokenizer) plus a small rlheal manifest.

This module finds checkpoints in folders, checks that they are whole, reads and writes manifests, and loads
and saves model + tokenizer with clear errors. Weights are only read from safetensors (never pickle), and
only from files inside the checkpoint folder (a weight index naming `../x` or `/x` is refused).

A manifest records the sha256 and size of every weight file when it is written (`weights`), so damage done
later (a truncated, deleted or altered file) is found by `find_damage`. A `parent` inside the same run folder
(the nearest folder above holding `results.sqlite`) is stored relative to the checkpoint, so a run folder
that is moved or copied keeps its lineage; `read_manifest` gives it back as an absolute path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from rlheal.atomic import staged_dir, write_text
from rlheal.paths import UnsafePathError, resolve_inside
from rlheal.provenance import environment
from rlheal.store import STORE_FILENAME

MANIFEST = "rlheal_manifest.json"
INDEX_FILE = "model.safetensors.index.json"
_STEP_RE = re.compile(r"(?:checkpoint|step|global_step)[-_]?(\d+)$")
NAME_RE = re.compile(r"^[\w.+=,@:-]{1,128}$")  # stages and names: they become folder names and labels
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


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
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)  # file -> {"sha256", "bytes"}, when written

    @property
    def label(self) -> str:
        """A short human name: `extra["name"]` when given (edits), else `<stage>-<step>`."""
        return str(self.extra.get("name") or f"{self.stage}-{self.step}")


def write_manifest(folder: str | Path, manifest: Manifest) -> None:
    """Write `manifest` into `folder` (last, after the weights): with the digests of the folder's weight files
    and a `parent` inside the same run folder made relative to the checkpoint. `folder` may be the staging
    sibling of the final folder (`atomic.staged_dir`): both lie in the same place, so the relative path holds."""
    folder = Path(folder)
    record = replace(manifest, parent=_portable_parent(folder, manifest.parent), weights=weight_digests(folder))
    write_text(folder / MANIFEST, json.dumps(asdict(record), indent=2, sort_keys=True))


def read_manifest(folder: str | Path) -> Manifest:
    """The folder's manifest, checked field by field (parent as an absolute path); for checkpoints written by
    other tools, one inferred from the folder name."""
    folder = Path(folder)
    path = folder / MANIFEST
    if path.exists():
        try:
            manifest = Manifest(**_checked(json.loads(path.read_text())))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path} is not a valid rlheal manifest ({exc}); delete it to treat the "
                                  "folder as an external checkpoint") from exc
        if manifest.parent is not None and not Path(manifest.parent).is_absolute():
            manifest = replace(manifest, parent=os.path.normpath(_lexical(folder) / manifest.parent))
        return manifest
    match = _STEP_RE.search(folder.name)
    return Manifest(stage="external", step=int(match.group(1)) if match else 0)


def _checked(data: Any) -> dict[str, Any]:
    """`data` when every manifest field has its type (names and stages are plain names); TypeError otherwise."""
    if not isinstance(data, dict):
        raise TypeError(f"a manifest is a JSON object, found {type(data).__name__}")
    unknown = set(data) - {f.name for f in fields(Manifest)}
    if unknown:
        raise TypeError(f"unknown fields {sorted(unknown)}")
    kinds = {"stage": (str,), "step": (int,), "parent": (str, type(None)), "seed": (int, type(None)),
             "config_hash": (str, type(None)), "extra": (dict,), "versions": (dict,), "weights": (dict,)}
    for name, value in data.items():
        if not isinstance(value, kinds[name]) or isinstance(value, bool):
            raise TypeError(f"{name} is {type(value).__name__} {_short(value)}, not {kinds[name][0].__name__}")
    for what, name in (("stage", data.get("stage")), ("extra.name", (data.get("extra") or {}).get("name"))):
        if name is not None and not (isinstance(name, str) and NAME_RE.match(name)):
            raise ValueError(f"{what} {_short(name)} is not a plain name (letters, digits and . _ + = , @ : -)")
    for file, digest in data.get("weights", {}).items():
        resolve_inside(".", file, "a weight file")
        if not (isinstance(digest, dict) and isinstance(digest.get("bytes"), int)
                and _SHA256_RE.match(str(digest.get("sha256")))):
            raise ValueError(f"weights[{_short(file)}] is not a {{sha256, bytes}} record")
    return data


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:60] + "…"


def _lexical(path: Path) -> Path:
    """`path` made absolute with the links above it resolved, but not a link at its own name (`RUN/base`)."""
    path = Path(path).absolute()
    return path.parent.resolve() / path.name


def run_folder_of(folder: str | Path) -> Path | None:
    """The run folder holding checkpoint `folder`: the nearest folder above it with a results store."""
    for above in _lexical(Path(folder)).parents:
        if (above / STORE_FILENAME).exists():
            return above
    return None


def _portable_parent(folder: Path, parent: str | None) -> str | None:
    """`parent` relative to `folder` when both lie in one run folder; otherwise as given."""
    if parent is None or not Path(parent).is_absolute():
        return parent
    run = run_folder_of(folder)
    target = _lexical(Path(parent))
    if run is None or not target.is_relative_to(run):
        return parent
    return os.path.relpath(target, _lexical(folder))


def weight_digests(folder: str | Path) -> dict[str, dict[str, Any]]:
    """{file: {"sha256", "bytes"}} of the folder's weight files (`*.safetensors` and the weight index)."""
    folder = Path(folder)
    if not folder.is_dir():
        return {}
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix == ".safetensors" or p.name == INDEX_FILE))
    return {p.name: {"sha256": _file_sha256(p), "bytes": p.stat().st_size} for p in files}


def _file_sha256(path: Path) -> str:
    return _hash_into(hashlib.sha256(), path).hexdigest()


def _hash_into(digest: Any, path: Path) -> Any:
    """`digest` updated with the bytes of `path`, read in 16 MiB chunks."""
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 24), b""):
            digest.update(chunk)
    return digest


def find_damage(folder: str | Path) -> str | None:
    """Why checkpoint `folder` is not what was saved, or None when it is whole: a file its manifest records
    that is missing, of another size or another sha256 (every recorded file is read); for a checkpoint whose
    manifest records no digests, what `check_checkpoint` finds or a safetensors file cut short."""
    folder = Path(folder)
    try:
        recorded = read_manifest(folder).weights
        check_checkpoint(folder)
    except CheckpointError as exc:
        return str(exc)
    for file, digest in recorded.items():
        path = folder / file
        if not path.is_file():
            return f"{path} is missing (its manifest records it)"
        if path.stat().st_size != digest["bytes"]:
            return f"{path} has {path.stat().st_size} bytes, its manifest records {digest['bytes']}"
        if _file_sha256(path) != digest["sha256"]:
            return f"{path} differs from the sha256 its manifest records"
    if not recorded:
        from safetensors import SafetensorError, safe_open

        for path in sorted(folder.glob("*.safetensors")):
            try:
                with safe_open(path, framework="pt"):
                    pass
            except (SafetensorError, OSError) as exc:
                return f"{path} is damaged ({exc})"
    return None


def index_shards(folder: str | Path) -> list[str]:
    """The shard files named by the folder's weight index, sorted ([] without an index); CheckpointError for a
    corrupt index or a shard name that is not a plain path inside the folder."""
    index = Path(folder) / INDEX_FILE
    if not index.exists():
        return []
    try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        for shard in shards:
            resolve_inside(folder, shard, f"the weight shard named by {index}")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{index} is corrupt ({exc})") from exc
    except UnsafePathError as exc:
        raise CheckpointError(str(exc)) from exc
    return shards


def check_checkpoint(folder: str | Path) -> Path:
    """Raise CheckpointError unless `folder` holds a loadable HF model (config + safetensors weights)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder {folder} does not exist{hub_hint(folder)}")
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
    missing = [s for s in index_shards(folder) if not (folder / s).exists()]
    if missing:
        raise CheckpointError(f"{folder} lacks weight shards {missing} named by its index")
    return folder


_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def hub_hint(path: str | Path) -> str:
    """For a missing path that reads like a Hugging Face Hub id (`Qwen/Qwen2.5-0.5B-Instruct`): how to get it
    (rlheal reads local folders only and downloads nothing); else ""."""
    text = str(path)
    if not _HUB_ID.match(text) or Path(text).exists():
        return ""
    local = f"models/{text.split('/')[1]}"
    return f" (rlheal reads local folders and downloads nothing: `hf download {text} --local-dir {local}`, then give {local})"


def weights_sha256(folder: str | Path) -> str:
    """sha256 (hex) of the folder's safetensors files, read in name order: for a one-file model it is what
    `sha256sum model.safetensors` prints. Equal digests mean bit-identical weights; two builds of one recipe on
    different CPUs or thread counts may differ (docs/BUILTIN_MODEL.md)."""
    folder = check_checkpoint(folder)
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")):
        _hash_into(digest, path)
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
            raise CheckpointError(f"{path} does not exist{hub_hint(path)}")
        subs = [p for p in path.iterdir() if p.is_dir() and (p / "config.json").exists()]
        if not subs:
            raise CheckpointError(f"{path} is neither a checkpoint (no config.json) nor a folder of checkpoints")
        found.extend(sorted(subs, key=lambda p: (read_manifest(p).step, p.name)))
    return found


def load_model(folder: str | Path, dtype: Any = None, device: str | None = None):
    """Load (model, tokenizer) from a checkpoint folder with safetensors only and no remote code; a checkpoint
    that lacks a weight tensor of its architecture is refused (transformers would fill it at random)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = check_checkpoint(folder)
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types; re-raise with the folder named
        raise CheckpointError(f"cannot load the tokenizer of {folder}: {exc}") from exc
    try:
        model, loading = AutoModelForCausalLM.from_pretrained(
            folder, dtype=dtype or torch.float32, use_safetensors=True, trust_remote_code=False,
            output_loading_info=True,
        )
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(f"cannot load the model weights of {folder}: {exc}") from exc
    missing = sorted(loading.get("missing_keys") or ())
    if missing:
        raise CheckpointError(f"{folder} lacks {len(missing)} weight tensor(s) of its architecture ({', '.join(missing[:3])}"
                              f"{', …' if len(missing) > 3 else ''}): the checkpoint is incomplete; save it again whole")
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
