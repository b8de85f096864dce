"""`arctic plan`: per-device memory of a recipe's training step, estimated from the model's config.

- `shape`: the model's shape and parameter count from its transformers config (no weights);
  `active_parameters(config)`: what one token runs through (an MoE model's k experts, not all E).
- `estimate`: `PlanSetup` (what the estimate knows about the run), the terms and the peak.
- `planner`: a recipe to a `PlanSetup`, methods' and features' plan functions, searches.
- `report`: the table, JSON, and the recipe change that would make a run fit.
- `hardware`: device presets. `measure`: exact peak tensor memory of a real step, for calibration.

Methods and features add their own terms through `plan = "module:function"` on their `Method` /
`Feature` (a function from `PlanSetup` to `PlanSetup`); core knows no method. See docs/plan.md.
"""

from arctic_core.plan.estimate import Estimate, Lever, PlanSetup, Term, estimate
from arctic_core.plan.shape import active_parameters

__all__ = ["Estimate", "Lever", "PlanSetup", "Term", "active_parameters", "estimate"]
