"""Writing Hugging Face folders atomically (temporary folder + rename)."""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path

from torch import nn

from rlhflab.models.load import is_peft


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

    A LoRA (peft) model is merged into a COPY (the training model keeps its adapter) and the
    merged weights go to `out_dir`; the adapter alone goes to `out_dir/adapter/`. The folder is
    written under a temporary name and renamed into place.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        if is_peft(model):
            model.save_pretrained(tmp / "adapter", state_dict=_plain_state(model))
            merged = copy.deepcopy(model).merge_and_unload()
            merged.save_pretrained(tmp, state_dict=_plain_state(merged))
            del merged
        else:
            model.save_pretrained(tmp, state_dict=_plain_state(model))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        _swap_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir
