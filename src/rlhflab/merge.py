"""`rlhflab merge --average`: a weighted average of models that share one architecture.

    merged[k] = sum_i w_i * model_i[k]   for every floating-point tensor k,   sum_i w_i = 1, w_i >= 0

Averaging the models of successive rounds or checkpoints is what Llama 3 does at the end of each
round (Llama Team, "The Llama 3 Herd of Models", arXiv 2407.21783, Sec. 4.1.5), and what "model
soups" do across fine-tunes (Wortsman et al., arXiv 2203.05482, uniform soup). Integer and bool
tensors (buffers) cannot be averaged: they must be equal in every model and are copied.

Inputs are Hugging Face folders with safetensors weights (`model.safetensors` or a sharded
`model.safetensors.index.json`), rlhflab run directories (their `final/`), or full fine-tuning
checkpoints written by rlhflab's loop (`checkpoints/step-N/`). Everything is checked before
anything is written; tensors are streamed one at a time (safetensors, float64 accumulation), and
the result is written to a temporary folder and renamed into place.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
from collections.abc import Callable
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rlhflab.errors import UserError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
CHECKPOINT_WEIGHTS = "trainable.safetensors"
META_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt",
    "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
)
"""Files copied from the first model (those it has)."""
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
PROGRESS_MIN_BYTES = 256 * 2**20
"""Show a progress bar over tensors when one model is at least this big."""
_CONFIG_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16"}


class MergeError(UserError):
    """An input or option of `rlhflab merge` is unusable. Exit code 2; nothing is written."""


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as the safetensors header describes it (nothing is loaded)."""

    dtype: str
    """safetensors dtype code: F32, BF16, F16, I64, BOOL, ..."""
    shape: tuple[int, ...]
    nbytes: int
    file: Path

    @property
    def is_float(self) -> bool:
        return self.dtype.startswith(("F", "BF"))


@dataclass(frozen=True)
class Source:
    """One input model, resolved to the files that hold its weights, config and tokenizer."""

    given: str
    """The path as the user wrote it."""
    weights_dir: Path
    """The folder whose safetensors files are averaged."""
    meta_dir: Path
    """The folder holding config.json and the tokenizer files (the base model for a checkpoint)."""
    tensors: dict[str, TensorInfo]
    config: dict[str, Any]
    """config.json (for a checkpoint: its base model's, with `dtype` set to the checkpoint's)."""
    shards: dict[str, list[str]] | None = None
    """File name -> tensor names, for a sharded folder; None = one file."""
    kind: str = "model"
    """'model' (a Hugging Face folder) or 'checkpoint' (rlhflab's checkpoints/step-N)."""

    @property
    def label(self) -> str:
        return self.given if Path(self.given) == self.weights_dir else f"{self.given} ({self.weights_dir})"


# --------------------------------------------------------------------------- reading inputs


HEADER_LIMIT = 100_000_000
"""The longest header the safetensors format allows (the library refuses longer ones): a corrupt
length is refused before that many bytes are read."""


def read_header(path: Path) -> tuple[dict[str, TensorInfo], dict[str, str]]:
    """Tensor names, dtypes, shapes and sizes of a safetensors file, and its metadata, read from
    the JSON header alone (format: 8-byte little-endian header length, JSON header, data)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or not 2 <= n <= min(size - 8, HEADER_LIMIT):
                raise ValueError("bad header length")
            header = json.loads(f.read(n))
        meta = header.pop("__metadata__", None) or {}
        tensors = {
            name: TensorInfo(str(v["dtype"]), tuple(int(d) for d in v["shape"]),
                             int(v["data_offsets"][1]) - int(v["data_offsets"][0]), path)
            for name, v in header.items()
        }
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError) as e:
        raise MergeError(f"{path}: not a readable safetensors file ({e})") from None
    return tensors, meta


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise MergeError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise MergeError(f"{path}: expected a JSON object")
    return data


def _no_weights_error(folder: Path, given: str) -> MergeError:
    """The reason a folder without model.safetensors / an index cannot be merged."""
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES) or n.endswith(".bin.index.json")]
    if pickles:
        return MergeError(
            f"'{given}' has only pickle weights ({', '.join(pickles[:3])}); rlhflab never unpickles a file "
            "it did not write. Convert the model to safetensors first, if you trust the file: "
            "AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(NEW_DIR) writes model.safetensors"
        )
    if "adapter_config.json" in names:
        return MergeError(f"'{given}' is a LoRA adapter, not a full model; average full models "
                          "(an rlhflab LoRA run writes merged weights to its final/ folder)")
    other = [n for n in names if n.endswith(".safetensors")]
    if other:
        return MergeError(f"'{given}' has {', '.join(other[:3])} but neither {SINGLE} nor {INDEX}; "
                          "save it with save_pretrained to get a standard Hugging Face folder")
    return MergeError(f"'{given}': no model weights found; expected {SINGLE} or {INDEX} (a Hugging Face "
                      "model folder, an rlhflab run directory or a checkpoints/step-N folder)")


def hf_source(folder: Path, given: str) -> Source:
    """A Hugging Face folder with safetensors weights, one file or sharded."""
    shards = None
    if (folder / SINGLE).is_file():
        tensors, _ = read_header(folder / SINGLE)
    elif (folder / INDEX).is_file():
        weight_map = _read_json(folder / INDEX).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise MergeError(f"{folder / INDEX}: no weight_map")
        shards, tensors = {}, {}
        for name, fname in weight_map.items():
            shards.setdefault(str(fname), []).append(name)
        for fname, names in shards.items():
            if not (folder / fname).is_file():
                raise MergeError(f"'{given}': {INDEX} names the shard {fname}, which is missing")
            found, _ = read_header(folder / fname)
            absent = [n for n in names if n not in found]
            if absent:
                raise MergeError(f"'{given}': {INDEX} puts tensor '{absent[0]}' in {fname}, but it is not there")
            tensors.update({n: found[n] for n in names})
    else:
        raise _no_weights_error(folder, given)
    if not (folder / "config.json").is_file():
        raise MergeError(f"'{given}': no config.json; a Hugging Face model folder (config.json, "
                         "safetensors weights, tokenizer files) is expected")
    return Source(given, folder, folder, tensors, _read_json(folder / "config.json"), shards)


def checkpoint_source(folder: Path, given: str) -> Source:
    """A full fine-tuning checkpoint of rlhflab's loop (see rlhflab.train.checkpoint).

    Its `trainable.safetensors` holds the parameters that required grad, under the names of
    `model.named_parameters()`. For full fine-tuning of a causal LM these are exactly the tensors
    of the base model's safetensors file (tied weights appear once in both), so the checkpoint is
    a model in the base model's layout, with the base model's config.json and tokenizer. A LoRA
    checkpoint (only the adapter) or a scalar-head checkpoint (reward model) is refused.
    """
    pass_final = "pass the run's final/ folder instead"
    if not (folder / "state.json").is_file():
        raise MergeError(f"'{given}' is an incomplete checkpoint (no state.json: it was still being "
                         f"written when the run stopped); pass a complete one, or {pass_final}")
    run_dir = folder.parent.parent
    run_cfg = _run_config(run_dir / "config.yaml", given, pass_final)
    if run_cfg.get("lora") is not None:
        raise MergeError(f"'{given}' is a LoRA checkpoint: it stores only the adapter, not the model; "
                         f"{pass_final} (it holds the merged weights)")
    from rlhflab.models.embedded import resolve_model_path

    try:
        base_dir = resolve_model_path(str(run_cfg.get("model")))
        base = hf_source(base_dir, str(base_dir))
    except UserError as e:
        raise MergeError(f"checkpoint '{given}': its run's model (config.yaml) is unusable: {e}; "
                         f"{pass_final}") from None
    tensors, _ = read_header(folder / CHECKPOINT_WEIGHTS)
    for name in sorted(set(tensors) | set(base.tensors)):
        mine, theirs = tensors.get(name), base.tensors.get(name)
        if mine is None or theirs is None or mine.shape != theirs.shape:
            raise MergeError(
                f"checkpoint '{given}' (algorithm '{run_cfg.get('algorithm')}') does not hold the model "
                f"{base_dir} in its own layout (first difference: tensor '{name}'); {pass_final}")
    config = dict(base.config)
    float_dtypes = {t.dtype for t in tensors.values() if t.is_float}
    if len(float_dtypes) == 1 and next(iter(float_dtypes)) in _CONFIG_DTYPES:
        # The loop trains in float32 whatever the base dtype; say so, or from_pretrained would cast.
        dtype = _CONFIG_DTYPES[next(iter(float_dtypes))]
        config["dtype"] = dtype
        if "torch_dtype" in config:
            config["torch_dtype"] = dtype
    return Source(given, folder, base_dir, tensors, config, kind="checkpoint")


def _run_config(path: Path, given: str, pass_final: str) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise MergeError(f"checkpoint '{given}': no config.yaml in its run directory {path.parent}, so its "
                         f"model's config and tokenizer are unknown; {pass_final}")
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise MergeError(f"{path}: not readable YAML ({e})") from None
    if not isinstance(cfg, dict):
        raise MergeError(f"{path}: not an rlhflab run config")
    return cfg


def resolve_source(given: str) -> Source:
    """A model folder, an rlhflab run directory (-> final/) or an rlhflab checkpoint."""
    path = Path(given).expanduser()
    if not path.exists():
        raise MergeError(f"'{given}': no such folder")
    if not path.is_dir():
        raise MergeError(f"'{given}': not a folder; give a Hugging Face model folder, an rlhflab run "
                         "directory or a checkpoints/step-N folder")
    if (path / CHECKPOINT_WEIGHTS).is_file():
        return checkpoint_source(path, given)
    if (path / "config.json").is_file():
        return hf_source(path, given)
    if (path / "final").is_dir():
        return hf_source(path / "final", given)
    from rlhflab.train.checkpoint import list_checkpoints

    found = list_checkpoints(path / "checkpoints") or list_checkpoints(path)
    if found:
        what = "is a folder of checkpoints" if found[0].parent == path else "has no final/ folder (the run has not finished)"
        raise MergeError(f"'{given}' {what}; pass one checkpoint, e.g. {found[-1]}, or the final/ folder of a "
                         "finished run (finish it with resume=true)")
    return hf_source(path, given)  # explains what is missing


# --------------------------------------------------------------------------- checks


def normalize_weights(raw: list[str] | list[float] | None, n: int) -> list[float]:
    """One weight per model, finite, >= 0, not all zero -> scaled to sum to 1 (None: equal)."""
    if raw is None:
        return [1.0 / n] * n
    if len(raw) != n:
        raise MergeError(f"--weights: got {len(raw)} weight(s) for {n} models; give one per model, in order")
    values = []
    for text in raw:
        try:
            w = float(text)
        except ValueError:
            raise MergeError(f"--weights: '{text}' is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise MergeError(f"--weights: every weight must be a finite number >= 0, got {text}")
        values.append(w)
    total = math.fsum(values)
    if total <= 0:
        raise MergeError("--weights: all weights are zero; at least one must be positive")
    return [w / total for w in values]


def check_compatible(sources: list[Source]) -> None:
    """Same model_type and architectures, and the same tensor names, shapes and dtypes."""
    first = sources[0]
    for other in sources[1:]:
        for key in ("model_type", "architectures"):
            if first.config.get(key) != other.config.get(key):
                raise MergeError(f"{key} differs: {first.config.get(key)!r} in {first.label} but "
                                 f"{other.config.get(key)!r} in {other.label}; only models of one architecture "
                                 "can be averaged")
        for name in sorted(set(first.tensors) | set(other.tensors)):
            a, b = first.tensors.get(name), other.tensors.get(name)
            if a is None or b is None:
                has, lacks = (first, other) if b is None else (other, first)
                raise MergeError(f"tensor '{name}' is in {has.label} but not in {lacks.label}; "
                                 "the models must have the same tensors")
            if a.shape != b.shape or a.dtype != b.dtype:
                what = "shape" if a.shape != b.shape else "dtype"
                raise MergeError(f"tensor '{name}' has {what} {_describe(a, what)} in {first.label} but "
                                 f"{_describe(b, what)} in {other.label}; the models must have the same "
                                 "tensor names, shapes and dtypes")


def _describe(t: TensorInfo, what: str) -> str:
    return str(list(t.shape)) if what == "shape" else t.dtype


def check_out_dir(out: Path, sources: list[Source], overwrite: bool) -> None:
    """The output must be a new folder (or a replaceable one with --overwrite), never an input."""
    target = out.resolve()
    for src in sources:
        for used in (Path(src.given).expanduser().resolve(), src.weights_dir.resolve(), src.meta_dir.resolve()):
            if target == used or target in used.parents:
                relation = "is" if target == used else "contains"
                raise MergeError(f"--out '{out}' {relation} the input {src.label}; write the merged model "
                                 "to a new folder")
    if not out.exists():
        return
    if not overwrite:
        raise MergeError(f"--out '{out}' already exists; pass --overwrite to replace it, or choose a new folder")
    if not out.is_dir():
        raise MergeError(f"--out '{out}' exists and is not a folder")
    if any(out.iterdir()) and not ((out / "config.json").is_file() or (out / "merge.json").is_file()):
        raise MergeError(f"--out '{out}' is not a model folder (no config.json); refusing to replace it")


def check_integer_tensors(sources: list[Source]) -> None:
    """Integer and bool tensors (buffers) cannot be averaged: they must be equal everywhere."""
    from safetensors import safe_open

    names = [n for n, t in sources[0].tensors.items() if not t.is_float]
    for name in sorted(names):
        with safe_open(str(sources[0].tensors[name].file), framework="pt") as f:
            ref = f.get_tensor(name)
        for src in sources[1:]:
            with safe_open(str(src.tensors[name].file), framework="pt") as f:
                if not torch.equal(ref, f.get_tensor(name)):
                    raise MergeError(f"integer tensor '{name}' differs between {sources[0].label} and "
                                     f"{src.label}; integer and bool tensors cannot be averaged and must be equal")


# --------------------------------------------------------------------------- averaging and writing


class _Reader:
    """Open safetensors files (memory-mapped) on first use; read one tensor at a time."""

    def __init__(self, stack: ExitStack):
        self._stack, self._open = stack, {}

    def get(self, info: TensorInfo, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if info.file not in self._open:
            self._open[info.file] = self._stack.enter_context(safe_open(str(info.file), framework="pt"))
        return self._open[info.file].get_tensor(name)


def average_tensor(name: str, sources: list[Source], weights: list[float], reader: _Reader) -> torch.Tensor:
    """sum_i w_i * tensor_i accumulated in float64, cast back to the input dtype. Models with
    weight 0 are not read (so [1, 0] returns the first model exactly); integer tensors are copied."""
    first = reader.get(sources[0].tensors[name], name)
    if not first.is_floating_point():
        return first
    acc = torch.zeros(first.shape, dtype=torch.float64)
    for i, (src, w) in enumerate(zip(sources, weights)):
        if w == 0.0:
            continue
        t = first if i == 0 else reader.get(src.tensors[name], name)
        acc.add_(t.to(torch.float64), alpha=w)
    return acc.to(first.dtype)


def _layout(first: Source) -> dict[str, list[str]]:
    """Output file -> tensor names: the first model's shards, else one model.safetensors."""
    if first.shards is not None:
        return first.shards
    return {SINGLE: sorted(first.tensors)}


def _progress(console: Any, show: bool):
    if not show:
        return nullcontext(None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("averaging"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    console=console, transient=False)


def write_safetensors(path: Path, infos: dict[str, TensorInfo], tensor: Callable[[str], torch.Tensor]) -> None:
    """Stream tensors into a safetensors file, holding one tensor in memory at a time.

    The header is written first from the dtypes and shapes already known (`infos`), then the bytes
    of `tensor(name)` for each name as it is computed. Layout as the safetensors writer makes it:
    8-byte little-endian header length, JSON header padded with spaces to a multiple of 8, then
    the data, tensors ordered by element size (largest first) and name, so each starts aligned.
    """
    if sys.byteorder != "little":  # pragma: no cover
        raise RuntimeError("writing safetensors needs a little-endian machine")

    def itemsize(name: str) -> int:
        numel = math.prod(infos[name].shape)
        return infos[name].nbytes // numel if numel else 1

    order = sorted(infos, key=lambda n: (-itemsize(n), n))
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name in order:
        info = infos[name]
        header[name] = {"dtype": info.dtype, "shape": list(info.shape), "data_offsets": [offset, offset + info.nbytes]}
        offset += info.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for name in order:
            data = tensor(name).contiguous().reshape(-1).view(torch.uint8)
            if data.numel() != infos[name].nbytes:
                raise RuntimeError(f"tensor '{name}': {data.numel()} bytes computed, {infos[name].nbytes} expected")
            f.write(data.numpy().data)


def _write_weights(tmp: Path, sources: list[Source], weights: list[float], console: Any) -> None:
    """The averaged safetensors file(s), one tensor in memory at a time, with a progress bar for
    big models."""
    first = sources[0]
    layout = _layout(first)
    model_bytes = sum(t.nbytes for t in first.tensors.values())
    with ExitStack() as stack, _progress(console, model_bytes >= PROGRESS_MIN_BYTES) as bar:
        reader = _Reader(stack)
        task = bar.add_task("tensors", total=len(first.tensors)) if bar is not None else None

        def averaged(name: str) -> torch.Tensor:
            t = average_tensor(name, sources, weights, reader)
            if bar is not None:
                bar.advance(task)
            return t

        for fname, names in layout.items():
            write_safetensors(tmp / fname, {n: first.tensors[n] for n in names}, averaged)
    if first.shards is not None:
        index = {
            "metadata": {"total_size": model_bytes,
                         "total_parameters": sum(math.prod(t.shape) for t in first.tensors.values())},
            "weight_map": {name: fname for fname, names in layout.items() for name in sorted(names)},
        }
        (tmp / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _copy_meta(tmp: Path, first: Source) -> None:
    """config.json (as resolved), generation config, tokenizer files and remote code of the first model."""
    for name in META_FILES:
        if name != "config.json" and (first.meta_dir / name).is_file():
            shutil.copy2(first.meta_dir / name, tmp / name)
    if "auto_map" in first.config:
        for py in first.meta_dir.glob("*.py"):
            shutil.copy2(py, tmp / py.name)
    if first.kind == "model":
        shutil.copy2(first.meta_dir / "config.json", tmp / "config.json")
    else:  # a checkpoint: its base model's config with the checkpoint's dtype
        (tmp / "config.json").write_text(json.dumps(first.config, indent=2, sort_keys=True) + "\n")


def _merge_record(sources: list[Source], weights: list[float]) -> dict[str, Any]:
    from rlhflab import __version__

    return {
        "method": "weighted_average",
        "formula": "merged[k] = sum_i weight_i * model_i[k] (float64 accumulation, cast to the input dtype)",
        "rlhflab_version": __version__,
        "inputs": [
            {"path": s.given, "weights_from": str(s.weights_dir.resolve()), "kind": s.kind, "weight": w}
            for s, w in zip(sources, weights)
        ],
        "weights": weights,
        "tensors": len(sources[0].tensors),
    }


def average_models(inputs: list[str], out: str, weights: list[str] | list[float] | None = None,
                   overwrite: bool = False, console: Any = None) -> Path:
    """Write the weighted average of `inputs` to `out` (see the module docstring); returns `out`.

    Every check runs before anything is written; on any error `out` is left as it was.
    """
    from rich.console import Console
    from rich.markup import escape

    from rlhflab.models.save import _swap_into_place

    console = console or Console(stderr=True)
    if len(inputs) < 2:
        raise MergeError(f"--average needs at least 2 models, got {len(inputs)}")
    norm = normalize_weights(weights, len(inputs))
    sources = [resolve_source(str(p)) for p in inputs]
    out_dir = Path(out).expanduser()
    check_out_dir(out_dir, sources, overwrite)
    check_compatible(sources)
    check_integer_tensors(sources)

    model_bytes = sum(t.nbytes for t in sources[0].tensors.values())
    console.print(f"merge: weighted average of {len(sources)} models, {len(sources[0].tensors)} tensors, "
                  f"{model_bytes / 2**20:,.1f} MiB each; normalized weights:")
    for src, w in zip(sources, norm):
        console.print(f"  {w:.6f}  {escape(src.label)}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the result is a folder like any other
        _write_weights(tmp, sources, norm, console)
        _copy_meta(tmp, sources[0])
        (tmp / "merge.json").write_text(json.dumps(_merge_record(sources, norm), indent=2) + "\n")
        _swap_into_place(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    console.print(f"[bold green]done[/]: merged model written to {escape(str(out_dir))} (inputs and weights in merge.json)")
    return out_dir
