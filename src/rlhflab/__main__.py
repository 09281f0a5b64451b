"""`python -m rlhflab ...` (also what `torchrun -m rlhflab train ...` runs on every rank)."""

import sys

from rlhflab.cli import main

sys.exit(main())
