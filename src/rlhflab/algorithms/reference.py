"""Reference log-probabilities computed once, before training, and cached on disk.

With a frozen reference (the initial policy, the adapter-disabled base of a LoRA run, or
`ref_model`), the reference log-prob of every completion in the data is a constant: one pass over
the data replaces a reference forward in every step. The result is stored as safetensors under
`$RLHFLAB_CACHE/reference/<key>.safetensors` (or `$RLHFLAB_REFERENCE_CACHE/<key>.safetensors`); the key hashes the reference model's files (name,
size, modification time), the exact token ids and scored-token masks of every sequence, and the
settings that change the numbers, so a resumed run, a second run on the same data or a sweep over
losses reuses it, and any change recomputes it.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from rlhflab.types import TokenizedSeq

_WEIGHT_SUFFIXES = (".safetensors", ".json", ".bin", ".model")


def model_identity(path: str | os.PathLike) -> str:
    """A cheap fingerprint of a model folder: the name, size and mtime of each weight/config file."""
    folder = Path(path)
    parts = [str(folder.resolve())]
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def sequences_digest(seqs: Iterable[tuple[Sequence[int], Sequence[bool]]]) -> str:
    """sha256 of (token ids, scored mask) of every sequence, in order."""
    h = hashlib.sha256()
    for ids, mask in seqs:
        h.update(torch.tensor(list(ids), dtype=torch.int64).numpy().tobytes())
        h.update(bytes(bytearray(bool(m) for m in mask)))
        h.update(b"|")
    return h.hexdigest()


def cache_dir() -> Path:
    """`$RLHFLAB_REFERENCE_CACHE`, else `$RLHFLAB_CACHE/reference` (default ~/.cache/rlhflab/reference)."""
    from rlhflab.models import cache_root

    env = os.environ.get("RLHFLAB_REFERENCE_CACHE")
    return Path(env).expanduser() if env else cache_root() / "reference"


def cache_path(key_parts: Sequence[str]) -> Path:
    key = hashlib.sha256("\n".join(key_parts).encode()).hexdigest()[:32]
    return cache_dir() / f"{key}.safetensors"


def _load(path: Path, n: int) -> torch.Tensor | None:
    from safetensors import safe_open

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            logps = f.get_tensor("logps")
        return logps if logps.shape[0] == n else None
    except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
        return None


def _store(path: Path, logps: torch.Tensor, console: Any) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({"logps": logps}, tmp)
        os.replace(tmp, path)
    except OSError as e:  # an unwritable cache only costs the reuse
        Path(tmp).unlink(missing_ok=True)
        console.print(f"[yellow]warning:[/] could not cache reference log-probs at {path}: {e}")


def load_or_compute(path: Path, n: int, compute: Callable[[int, int], torch.Tensor], console: Any,
                    dist: Any = None) -> tuple[torch.Tensor, bool]:
    """The cached (n, k) float32 tensor at `path`, or `compute(lo, hi)` (rows lo..hi-1) saved there
    atomically. Returns (tensor, came_from_cache). In a multi-process run (`dist`) the cache is used
    only if every rank can read it; otherwise each rank computes a slice, all receive the whole,
    and rank 0 writes the file."""
    from rlhflab.train.distributed import SINGLE

    dist = dist or SINGLE
    logps = _load(path, n)
    if dist.agree(logps is not None):
        return logps, True
    lo, hi = dist.block(n)
    mine = compute(lo, hi).float().cpu().contiguous() if hi > lo else None
    logps = torch.cat([p for p in dist.all_gather_object(mine) if p is not None]) if dist.enabled else mine
    if dist.is_main:
        _store(path, logps, console)
    return logps, False


def run_batches(items: Sequence[Any], micro_batch_size: int, fn: Callable[[Sequence[Any]], torch.Tensor],
                description: str, console: Any) -> torch.Tensor:
    """fn over consecutive slices of `items` under no_grad with a progress bar; rows concatenated."""
    from rlhflab.train.metrics import make_progress

    out = []
    with torch.no_grad(), make_progress(console, description) as progress:
        task = progress.add_task(description, total=len(items), info="")
        for k in range(0, len(items), micro_batch_size):
            out.append(fn(items[k:k + micro_batch_size]).float().cpu())
            progress.update(task, advance=len(items[k:k + micro_batch_size]))
    return torch.cat(out)


def precompute(items: Sequence[Any], sides: Callable[[Any], Sequence[TokenizedSeq]],
               mask_of: Callable[[TokenizedSeq], Sequence[bool]], score: Callable[[Sequence[Any]], torch.Tensor],
               model_path: str | os.PathLike, tag: str, ctx: Any, split: str) -> tuple[torch.Tensor, bool]:
    """Reference log-probs (N, k) of `items`, from the cache or by `score` over micro-batches.

    `sides(item)` are the item's scored sequences and `mask_of(seq)` their scored-token masks
    (both enter the cache key with the reference model's identity and `tag`)."""
    digest = sequences_digest((s.input_ids, mask_of(s)) for it in items for s in sides(it))
    path = cache_path([model_identity(model_path), digest, tag])
    return load_or_compute(path, len(items), lambda lo, hi: run_batches(
        items[lo:hi], ctx.micro_batch_size, score, f"reference log-probs ({split})", ctx.console), ctx.console,
        getattr(ctx, "dist", None))


def load_reference_model(cfg: Any, device: torch.device) -> torch.nn.Module:
    """The frozen `ref_model` of the config (a causal LM in eval mode without gradients)."""
    from rlhflab.models import load_causal_lm, resolve_model_path

    ref = load_causal_lm(str(resolve_model_path(cfg.ref_model)), device=device, trust_remote_code=cfg.trust_remote_code)
    return ref.requires_grad_(False).eval()
