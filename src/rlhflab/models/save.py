"""Writing Hugging Face folders atomically (temporary folder + rename), and the LoRA-merged
weights of a peft model (also what the vLLM engine receives at each weight sync)."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from rlhflab.errors import UserError
from rlhflab.models.load import is_peft

PEFT_PREFIX = "base_model.model."


def hf_weight_name(name: str) -> str:
    """A state-dict key of a plain or peft model as its Hugging Face checkpoint name:
    'base_model.model.model.layers.0.q_proj.base_layer.weight' -> 'model.layers.0.q_proj.weight'."""
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    return name.replace(".base_layer.", ".")


def _lora_layers(model: nn.Module) -> dict[str, Any]:
    """peft LoRA layers by their Hugging Face module name (empty for a plain model)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # pragma: no cover - peft is a dependency
        return {}
    return {hf_weight_name(name + "."): m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def _delta(layer: Any, module: str) -> Tensor | None:
    """Sum of the active, unmerged adapters' W updates (scale * B @ A) of one LoRA layer."""
    if getattr(layer, "disable_adapters", False):
        return None
    out = None
    for name in layer.active_adapters:
        if name in layer.merged_adapters or (name not in layer.lora_A and name not in getattr(layer, "lora_embedding_A", {})):
            continue
        if layer.use_dora.get(name) or getattr(layer, "lora_bias", {}).get(name) or getattr(layer, "lora_variant", {}).get(name):
            raise UserError(f"{module}: DoRA, LoRA biases and other LoRA variants cannot be merged here (plain LoRA only)")
        d = layer.get_delta_weight(name)
        out = d if out is None else out + d
    return out


def merged_weights(model: nn.Module, state: dict[str, Tensor] | None = None) -> Iterator[tuple[str, Tensor]]:
    """(Hugging Face name, tensor) for every entry of `model`'s state dict (or of `state`, the same
    keys), LoRA merged: for an adapted module the base weight plus its active adapters' scale * B @ A
    (peft's `get_delta_weight`), computed one module at a time without modifying the model; LoRA's
    own A / B tensors are left out, and a `modules_to_save` module (a reward or value head trained
    in full) stands in for the original it replaced. An FSDP2 shard (DTensor) is gathered into the
    full tensor: a collective, so every rank of a sharded run walks the same state dict in the same
    order."""
    layers = _lora_layers(model)
    active = set(model.active_adapters) if is_peft(model) else set()  # modules_to_save copies of these
    for key, tensor in (model.state_dict() if state is None else state).items():
        if ".lora_" in key or ".original_module." in key:
            continue
        saved = re.search(r"\.modules_to_save\.([^.]+)\.", key)
        if saved is not None:
            if saved.group(1) not in active:
                continue
            key = key[:saved.start()] + "." + key[saved.end():]
        name = hf_weight_name(key)
        module, _, leaf = name.rpartition(".")
        with torch.no_grad():
            if leaf == "weight" and module + "." in layers:
                delta = _delta(layers[module + "."], module)
                if delta is not None:
                    tensor = tensor + delta.to(tensor.dtype)
            if hasattr(tensor, "full_tensor"):
                tensor = tensor.full_tensor()
        yield name, tensor.detach()


def _swap_into_place(tmp: Path, out_dir: Path) -> None:
    """Rename `tmp` to `out_dir`. An existing `out_dir` is first renamed aside and deleted only
    after the new folder is in place, so a crash leaves either the old or the new folder."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        if old.exists():
            shutil.rmtree(old)
        os.rename(out_dir, old)
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _plain_state(model: nn.Module) -> dict | None:
    """None for an ordinary model; for an FSDP-sharded one while its parameters are gathered, a state
    dict of copies of the full tensors (its own state_dict() holds the shards)."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2
        return None
    if not any(isinstance(m, FSDPModule) for m in model.modules()):
        return None
    # while gathered, the module attributes hold the full tensors; FSDP's state_dict() would put the
    # shards (DTensors) back in their place, so it is not called
    out = {k: p.detach().clone() for k, p in model.named_parameters(remove_duplicate=False)}
    for mod_name, mod in model.named_modules(remove_duplicate=False):
        for name, b in mod.named_buffers(recurse=False):
            if b is not None and name not in mod._non_persistent_buffers_set:  # noqa: SLF001
                out[f"{mod_name}.{name}" if mod_name else name] = b.detach().clone()
    return out


def save_pretrained_hf(model: nn.Module, tokenizer, out_dir: str | os.PathLike) -> Path:
    """Save `model` (and `tokenizer`, when given) as a Hugging Face folder: config.json,
    model.safetensors, generation config, tokenizer files.

    A LoRA (peft) model's merged weights (`merged_weights`: computed module by module, the training
    model keeps its adapter and no copy of the model is made) go to `out_dir`; the adapter alone
    goes to `out_dir/adapter/`. The folder is
    written under a temporary name and renamed into place.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        if is_peft(model):  # the adapter, then the merged weights under the base model's own names
            state = _plain_state(model)
            model.save_pretrained(tmp / "adapter", state_dict=state)
            model.get_base_model().save_pretrained(tmp, state_dict=dict(merged_weights(model, state)))
        else:
            model.save_pretrained(tmp, state_dict=_plain_state(model))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _swap_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
