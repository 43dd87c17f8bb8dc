"""Prices: USD per million tokens, shipped defaults plus user overrides from the config file.

Lookup is by exact model name, then by the longest known prefix (``gpt-4o-2024-08-06`` -> ``gpt-4o``).
The offline scripted model has a nominal, clearly labelled price so budgets can be exercised offline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["DEFAULT_PRICES", "Price", "PriceTable"]

#: (input, output) USD per 1M tokens — public list prices; override them in config.toml [prices."<model>"]
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-sonnet-4": (3.00, 15.00),
    "gemini-1.5-pro": (1.25, 5.00),
    "gemini-2.0-flash": (0.10, 0.40),
    "gemini-2.5-pro": (1.25, 10.00),
    "labd-offline": (1.00, 2.00),  # nominal: the offline scripted model costs nothing real
}


@dataclass(frozen=True)
class Price:
    input: float
    output: float
    source: str  # "default:<key>", "config:<key>" or "unknown"

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


class PriceTable:
    """Defaults overlaid with ``overrides`` ({model: {"input": x, "output": y}})."""

    def __init__(self, overrides: Mapping[str, Mapping[str, float]] | None = None) -> None:
        self._table: dict[str, tuple[float, float, str]] = {k: (*v, "default") for k, v in DEFAULT_PRICES.items()}
        for model, p in (overrides or {}).items():
            self._table[model] = (float(p.get("input", 0.0)), float(p.get("output", 0.0)), "config")
        self._cache: dict[str, Price] = {}

    def price(self, model: str) -> Price:
        """The price of ``model`` (remembered per model name: it is asked for after every LLM call)."""
        cached = self._cache.get(model)
        if cached is None:
            cached = self._lookup(model)
            if len(self._cache) < 1024:  # model names come from responses: bound the memo
                self._cache[model] = cached
        return cached

    def _lookup(self, model: str) -> Price:
        hit = self._table.get(model)
        key = model
        if hit is None:
            prefixes = [k for k in self._table if model.startswith(k)]
            if prefixes:
                key = max(prefixes, key=len)
                hit = self._table[key]
        if hit is None:
            return Price(0.0, 0.0, "unknown")
        return Price(hit[0], hit[1], f"{hit[2]}:{key}")
