"""`rlhflab` command line.

Exit codes: 0 success; 2 a user error (config, data, paths) with one clear message and no
traceback; 1 an internal error or a halted run.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rlhflab import __version__
from rlhflab.errors import UserError


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _quiet_libraries() -> None:
    """rlhflab shows its own progress; silence per-load bars and known-harmless warnings of dependencies."""
    import warnings

    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def cmd_train(args: argparse.Namespace) -> int:
    from rlhflab.config import load_config
    from rlhflab.train.run import run

    cfg = load_config(args.config, args.overrides)
    _quiet_libraries()
    run(cfg, _console())
    return 0


def cmd_quickstart(args: argparse.Namespace) -> int:
    from rlhflab.quickstart import quickstart

    _quiet_libraries()
    quickstart(output_dir=args.output_dir, steps=args.steps, model=args.model, console=_console())
    return 0


def cmd_data_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from rlhflab.data.inspect import run_inspect

    run_inspect(args.file, format=args.format, model=args.model, console=Console())
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from rlhflab.merge import average_models

    average_models(args.average, args.out, weights=args.weights, overwrite=args.overwrite, console=_console())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rlhflab", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"rlhflab {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train with a YAML config: rlhflab train CONFIG.yaml [key=value ...]")
    p.add_argument("config", help="YAML config file (see examples/)")
    p.add_argument("overrides", nargs="*", help="dotted overrides such as optim.lr=1e-5 max_steps=20")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("quickstart", help="a short LoRA SFT of the embedded SmolLM2-135M-Instruct on CPU")
    p.add_argument("--output-dir", default="runs/quickstart")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--model", default="smollm2-135m")
    p.set_defaults(func=cmd_quickstart)

    p = sub.add_parser("data", help="data tools")
    dsub = p.add_subparsers(dest="data_command", required=True)
    q = dsub.add_parser("inspect", help="detected format, counts, lengths, one example with its loss mask")
    q.add_argument("file")
    q.add_argument("--format", default="auto")
    q.add_argument("--model", default=None, help="tokenize with this model's tokenizer (e.g. smollm2-135m)")
    q.set_defaults(func=cmd_data_inspect)

    p = sub.add_parser("merge", help="average models of rounds or checkpoints: rlhflab merge --average A B ... --out DIR")
    p.add_argument("--average", nargs="+", required=True, metavar="MODEL",
                   help="Hugging Face folders (safetensors), rlhflab run directories or checkpoints/step-N folders")
    p.add_argument("--out", required=True, help="new folder for the averaged model")
    p.add_argument("--weights", nargs="+", default=None, metavar="W",
                   help="one weight per model, >= 0, normalized to sum to 1 (default: equal)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_merge)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; the newest checkpoint is intact", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001
        from rlhflab.train.loop import NonFiniteError

        if isinstance(e, NonFiniteError):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
