"""The suites of bench/run.py, one module each, all with the same interface:

- `NAME`, `prepare(ctx) -> dict`: the suite's data (written to the scratch folder), its token
  statistics and settings; keys starting with "_" stay out of the results JSON.
- `run(ctx, model, prep) -> list[dict]`: every configuration of the suite on one model, one
  process each (rows as bench/common.py:launch makes them, summarized).
- `step_flops(shape, prep, row) -> float | None`: the model FLOPs of one optimizer step (or, for
  generation, of one call) of that row, for MFU (bench/flops.py).
"""

from . import dpo, generate, grpo, rm, sft

SUITES = {m.NAME: m for m in (sft, rm, dpo, grpo, generate)}
