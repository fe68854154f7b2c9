"""Stream the 2-D weight matrices of a Hugging Face checkpoint from its safetensors files, one at a time.

No model is built: tensors are read lazily with `safetensors.safe_open`, from one file or from the shards
named by `model.safetensors.index.json`. Names are parsed into (layer, module) for Llama/Qwen/Mistral-style
checkpoints: `model.layers.{i}.self_attn.{q,k,v,o}_proj.weight`, `...mlp.{gate,up,down}_proj.weight`,
`model.embed_tokens.weight` (embed) and `lm_head.weight` (head).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from rlheal.models.checkpoint import INDEX_FILE, check_checkpoint, index_shards  # noqa: F401 - INDEX_FILE re-exported

MODULES = ("q", "k", "v", "o", "gate", "up", "down", "embed", "head")
DECODER_MODULES = MODULES[:7]
_LAYER_RE = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_MODULE_RE = re.compile(r"(?:^|\.)(q|k|v|o|gate|up|down)_proj\.weight$")


class WeightsError(ValueError):
    """Checkpoints whose weights cannot be compared or read; the message names the tensor or file."""


@dataclass(frozen=True)
class WeightInfo:
    """One 2-D tensor of a checkpoint: its name, layer (None outside decoder layers), module, shape, dtype, file."""

    name: str
    layer: int | None
    module: str
    shape: tuple[int, int]
    dtype: str
    file: str


def parse_name(name: str) -> tuple[int | None, str]:
    """(layer, module) of a tensor name; module is one of MODULES or "other" for unrecognised 2-D tensors."""
    layer_match = _LAYER_RE.search(name)
    layer = int(layer_match.group(1)) if layer_match else None
    module_match = _MODULE_RE.search(name)
    if module_match:
        return layer, module_match.group(1)
    if name.endswith("embed_tokens.weight") or name.endswith("wte.weight"):
        return layer, "embed"
    if name == "lm_head.weight" or name.endswith(".lm_head.weight"):
        return layer, "head"
    return layer, "other"


def parse_layers(spec: str | None) -> set[int] | None:
    """Layer selection from text like "0-3,8,10-11" (inclusive ranges); None or "" selects every layer."""
    if not spec:
        return None
    chosen: set[int] = set()
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part:
                lo, hi = (int(x) for x in part.split("-", 1))
                if lo > hi:
                    raise ValueError
                chosen.update(range(lo, hi + 1))
            else:
                chosen.add(int(part))
        except ValueError:
            raise WeightsError(f"bad layer selection {spec!r}: use numbers and inclusive ranges, e.g. 0-3,8") from None
    return chosen


def parse_modules(spec: str | Iterable[str] | None) -> tuple[str, ...]:
    """Module selection from "q,k,v" or a list; None selects the decoder modules (embeddings/head excluded)."""
    if spec is None:
        return DECODER_MODULES
    names = [m.strip() for m in (spec.split(",") if isinstance(spec, str) else spec) if m.strip()]
    unknown = [m for m in names if m not in (*MODULES, "other")]
    if unknown or not names:
        raise WeightsError(f"unknown modules {unknown or spec!r}; choose from {', '.join(MODULES)} (or other)")
    return tuple(names)


class CheckpointWeights:
    """The 2-D weights of one checkpoint folder, listed from the safetensors headers and read on demand."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = check_checkpoint(folder).resolve()
        self.config = json.loads((self.folder / "config.json").read_text())
        self._files = self._weight_files()
        self.tensors: dict[str, WeightInfo] = {}
        self.all_names: dict[str, str] = {}  # every tensor (any rank) -> file
        for file in self._files:
            with safe_open(self.folder / file, framework="pt") as fh:
                for name in fh.keys():  # noqa: SIM118 - safe_open is not a mapping
                    self.all_names[name] = file
                    sl = fh.get_slice(name)
                    shape = tuple(sl.get_shape())
                    if len(shape) == 2:
                        layer, module = parse_name(name)
                        self.tensors[name] = WeightInfo(name, layer, module, (shape[0], shape[1]),
                                                        str(sl.get_dtype()), file)

    def _weight_files(self) -> list[str]:
        return index_shards(self.folder) or sorted(p.name for p in self.folder.glob("*.safetensors"))

    @property
    def files(self) -> list[str]:
        return list(self._files)

    @property
    def tied_embeddings(self) -> bool:
        """True when the checkpoint has no lm_head tensor and the config ties it to the embeddings."""
        has_head = any(info.module == "head" for info in self.tensors.values())
        return not has_head and bool(self.config.get("tie_word_embeddings", False))

    def fingerprint(self) -> str:
        """A hash of the weight files' names, sizes and safetensors headers: changes when any weight changes
        size or layout, or the files are rewritten with other metadata. Cheap: reads only headers."""
        digest = hashlib.sha256()
        for file in self._files:
            path = self.folder / file
            stat = path.stat()
            digest.update(f"{file}:{stat.st_size}:{stat.st_mtime_ns}".encode())
            with path.open("rb") as fh:
                size = int.from_bytes(fh.read(8), "little")
                digest.update(fh.read(min(size, 1 << 24)))
        return digest.hexdigest()[:16]

    def select(self, modules: Iterable[str] | None = None, layers: set[int] | None = None) -> list[WeightInfo]:
        """Tensors of the chosen modules (default: decoder modules) and layers (None: all), in file order.

        Layer filters apply to decoder-layer tensors only; embed/head pass when their module is chosen.
        """
        chosen = set(parse_modules(modules))
        out = []
        for info in self.tensors.values():
            if info.module not in chosen:
                continue
            if layers is not None and info.layer is not None and info.layer not in layers:
                continue
            out.append(info)
        return sorted(out, key=lambda i: (i.layer if i.layer is not None else -1, MODULES.index(i.module)
                                          if i.module in MODULES else 99, i.name))

    def read(self, name: str) -> torch.Tensor:
        """One tensor as stored (its dtype, on the CPU): the disk read, e.g. for a prefetching thread."""
        file = self.all_names.get(name)
        if file is None:
            raise WeightsError(f"{self.folder} has no tensor {name!r}")
        with safe_open(self.folder / file, framework="pt", device="cpu") as fh:
            return fh.get_tensor(name)

    def upload(self, name: str, stored: torch.Tensor, dtype: torch.dtype = torch.float64,
               device: str | torch.device = "cpu") -> torch.Tensor:
        """`stored` (from `read`) moved to `device` as stored, upcast there to `dtype` and checked finite.

        Non-finite values are an error naming the tensor.
        """
        tensor = stored.to(device, non_blocking=stored.is_pinned()).to(dtype)
        # any NaN/inf makes the sum non-finite; only then are the bad values counted (an overflowing sum of
        # finite values counts none)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor.sum())):
            bad = int((~torch.isfinite(tensor)).sum())
            if bad:
                raise WeightsError(f"{self.folder}: tensor {name} has {bad} non-finite values (NaN/inf); the "
                                   "checkpoint is corrupt or diverged: drop it from the sweep")
        return tensor

    def load(self, name: str, dtype: torch.dtype = torch.float64, device: str | torch.device = "cpu") -> torch.Tensor:
        """One tensor upcast to `dtype` on `device` (`read` then `upload`); non-finite values are an error."""
        return self.upload(name, self.read(name), dtype, device)


def check_compatible(reference: CheckpointWeights, target: CheckpointWeights, infos: Iterable[WeightInfo]) -> None:
    """Raise WeightsError unless `target` holds every tensor of `infos` (from the reference) with the same shape,
    and the reference every tensor of the target of the same modules and layers (none is skipped unsaid)."""
    infos = list(infos)
    problems = [f"{name} is missing from the reference" for name in _unmatched(target, infos)]
    for info in infos:
        other = target.tensors.get(info.name)
        if other is None:
            problems.append(f"{info.name} is missing")
        elif other.shape != info.shape:
            problems.append(f"{info.name} has shape {other.shape}, reference {info.shape}")
    if problems:
        shown = "; ".join(problems[:5]) + (f"; … {len(problems) - 5} more" if len(problems) > 5 else "")
        raise WeightsError(f"{target.folder} does not match the reference {reference.folder} "
                           f"(different architecture or a truncated checkpoint): {shown}")


def _unmatched(target: CheckpointWeights, infos: list[WeightInfo]) -> list[str]:
    """Tensors of `target` in the modules and layers of `infos` that `infos` do not name."""
    chosen = {(i.module, i.layer) for i in infos}
    modules, layers, names = {m for m, _ in chosen}, {layer for _, layer in chosen}, {i.name for i in infos}
    return sorted(n for n, t in target.tensors.items() if t.module in modules and t.layer in layers and n not in names)
