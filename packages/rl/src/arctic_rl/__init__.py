"""arctic-rl: the `grpo` method (online RL with verifiable rewards) for Arctic.

`from arctic_rl import reward` registers a reward function by name (see `arctic_rl.rewards`).
"""

from arctic_rl.rewards import reward

__all__ = ["reward"]
__version__ = "0.1.0"
