"""Atomic, resumable checkpoints holding only safetensors and JSON.

A checkpoint folder `checkpoints/step-000050/` holds:
- `trainable.safetensors`: every parameter that requires grad (all weights for full fine-tuning,
  the adapter and heads with LoRA), keyed by parameter name;
- `optimizer.safetensors` + `optimizer.json`: AdamW state tensors and the param groups;
- `rng.safetensors` + `state.json`: torch/CUDA RNG states, Python and NumPy RNG states, the step
  (which is also the data position: the sampler is a pure function of seed and step).

It is written to a temporary folder and renamed into place, so a kill at any moment leaves the
previous checkpoint intact; a folder without `state.json` is never considered complete.

The files hold full (unsharded) tensors whatever the world size: in a multi-process run rank 0
writes them (under FSDP every rank first takes part in gathering the shards), and on resume every
rank reads them and keeps its own shard.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

PREFIX = "step-"


def _trainable(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _full(t: torch.Tensor) -> torch.Tensor:
    """A CPU copy of the whole tensor (an FSDP DTensor is gathered from every rank: collective)."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().contiguous().cpu().clone()


def _like(full: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """`full` laid out like `ref`: this rank's shard when `ref` is an FSDP DTensor."""
    if hasattr(ref, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(ref.device, ref.dtype), ref.device_mesh, ref.placements, src_data_rank=None)
    return full.to(ref.device, ref.dtype)


def _flatten_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{pid}.{key}"] = _full(value)
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    for pid, values in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = s
    np_state = np.random.get_state()
    meta = {
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
    }
    return tensors, meta


def _set_rng_state(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    v, internal, gauss = meta["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save_checkpoint(
    ckpt_root: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer, extra: dict[str, Any], keep: int,
    write: bool = True,
) -> Path:
    """Write checkpoint `step` atomically and delete all but the newest `keep`. `write=False` (ranks
    other than 0) only takes part in gathering sharded state."""
    final = ckpt_root / f"{PREFIX}{step:06d}"
    trainable = _trainable(model)
    if not write and not any(hasattr(p, "full_tensor") for p in trainable.values()):
        return final  # replicated state (one process, DDP): nothing to gather
    weights = {n: _full(p) for n, p in trainable.items()}
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    if not write:
        return final
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_root / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(weights, str(tmp / "trainable.safetensors"))
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    (tmp / "optimizer.json").write_text(json.dumps(opt_meta))
    rng_tensors, rng_meta = _rng_state()
    save_file(rng_tensors, str(tmp / "rng.safetensors"))
    (tmp / "rng.json").write_text(json.dumps(rng_meta))
    # state.json last: its presence marks a complete checkpoint.
    (tmp / "state.json").write_text(json.dumps({"step": step, **extra}, indent=2))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def load_checkpoint(path: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model weights, optimizer and RNG states from `path`; return its state.json."""
    params = _trainable(model)
    weights = load_file(str(path / "trainable.safetensors"))
    missing = set(params) - set(weights)
    unexpected = set(weights) - set(params)
    if missing or unexpected:
        raise RuntimeError(
            f"checkpoint {path} does not match the model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(_like(weights[name], p))
    opt_sd = _unflatten_optimizer(load_file(str(path / "optimizer.safetensors")), json.loads((path / "optimizer.json").read_text()))
    order = list(params.values())  # optimizer parameter i is the model's i-th trainable parameter
    for pid, st in opt_sd["state"].items():
        for key, value in st.items():
            if torch.is_tensor(value) and pid < len(order) and value.shape == order[pid].shape and value.dim() > 0:
                st[key] = _like(value, order[pid])
    optimizer.load_state_dict(opt_sd)
    _set_rng_state(load_file(str(path / "rng.safetensors")), json.loads((path / "rng.json").read_text()))
    return json.loads((path / "state.json").read_text())
