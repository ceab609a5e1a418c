"""Hebbian rules (pure functions) and the plastic layers that use them."""

from .layers import HebbConv2d, HebbLinear
from .rules import RULES, HebbTerms, Rule, get_rule

__all__ = ["RULES", "HebbConv2d", "HebbLinear", "HebbTerms", "Rule", "get_rule"]
