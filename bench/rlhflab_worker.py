"""One `rlhflab train CONFIG.yaml` run for bench/run.py, in its own process, through the CLI's own
entry point; then the run's metrics.jsonl, summary.json and resolved config.yaml go to RESULT.json.

    .venv/bin/python bench/rlhflab_worker.py CONFIG.yaml RESULT.json THREADS

RESULT.json: `history` (every metrics.jsonl row), the per-step columns the suites read
(`step_s` = `time/step_s`, `losses`), `summary`, `config_yaml`, the versions, and this process's
peak RSS (and peak GPU memory on a GPU). Exits with the CLI's code when training fails.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path


def main(config_path: str, out_path: str, threads: int) -> int:
    import torch

    torch.set_num_threads(threads)
    import transformers

    from rlhflab.cli import main as cli_main
    from rlhflab.config import read_yaml

    t = time.perf_counter()
    code = cli_main(["train", config_path])
    run_s = time.perf_counter() - t
    if code != 0:
        return code
    run_dir = Path(read_yaml(config_path)["output_dir"])
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    result = {
        "framework": "rlhflab", "torch": torch.__version__, "transformers": transformers.__version__,
        "threads": torch.get_num_threads(), "history": history,
        "step_s": [h.get("time/step_s") for h in history], "losses": [h.get("loss") for h in history],
        "timings": {"run_s": run_s},
        "summary": json.loads((run_dir / "summary.json").read_text()),
        "config_yaml": (run_dir / "config.yaml").read_text(),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        result["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    Path(out_path).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
