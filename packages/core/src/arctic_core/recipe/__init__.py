"""Recipes: TOML or YAML files with the same keys, checked before anything runs."""

from arctic_core.recipe.bundled import bundled_recipes
from arctic_core.recipe.loader import Recipe, apply_overrides, load_recipe, read_recipe

__all__ = ["Recipe", "apply_overrides", "bundled_recipes", "load_recipe", "read_recipe"]
