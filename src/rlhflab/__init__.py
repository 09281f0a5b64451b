"""rlhflab: post-training language models with reinforcement learning and preference optimization.

Importing the package is light: it pulls in no model, dataset or logging library.
"""

__version__ = "0.1.0"

from rlhflab.errors import UserError, DataError, ConfigError  # noqa: E402

__all__ = ["UserError", "DataError", "ConfigError", "__version__"]
