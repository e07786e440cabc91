"""Pick an adapter per request: ordered rules over the prompt text, then an optional embedding router.

A routes YAML (every key optional):

    rules:                       # tried in order, the first rule whose conditions all hold wins
      - name: gsm                # a label for logs and the response
        adapter: math            # an adapter name given to `serve --adapter NAME=DIR`, or "base"
        regex: '\\d+ \\+ \\d+'    # re.search over the prompt
        all: ["The answer is"]   # every phrase present
        any: ["=", "+"]          # at least one phrase present
        none: ["Passage:"]       # no phrase present
    embedding:                   # used when no rule matched
      embedder: minilm           # 'minilm' or a sentence-transformers folder
      min_similarity: 0.3        # below this cosine to every centroid -> default
      examples:                  # adapter -> example prompts; the centroid of each list routes
        math: ["What is 12 + 30?", ...]
    default: base                # when nothing else decided

Kaiwu-SIAT's NeurIPS efficiency-challenge submission routed exactly this way (rule order mattered: they
moved one rule to keep TruthfulQA prompts off a fine-tuned adapter).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

BASE = "base"


@dataclass
class Rule:
    """One routing rule: every condition given must hold for the prompt."""

    adapter: str
    name: str = ""
    regex: str | None = None
    all: list[str] = field(default_factory=list)
    any: list[str] = field(default_factory=list)
    none: list[str] = field(default_factory=list)

    def __post_init__(self):
        self.name = self.name or self.adapter
        if self.regex is None and not (self.all or self.any or self.none):
            raise ConfigError("rules", f"rule {self.name!r} has no condition (regex, all, any or none)")
        try:
            self._re = re.compile(self.regex) if self.regex is not None else None
        except re.error as exc:
            raise ConfigError("rules", f"rule {self.name!r}: bad regex {self.regex!r}: {exc}") from None

    def matches(self, prompt: str) -> bool:
        """Whether the prompt satisfies every condition of this rule."""
        return (
            (self._re is None or self._re.search(prompt) is not None)
            and all(p in prompt for p in self.all)
            and (not self.any or any(p in prompt for p in self.any))
            and not any(p in prompt for p in self.none)
        )


@dataclass
class Route:
    """The routing decision: adapter name ('base' = adapters off) and what decided it."""

    adapter: str
    reason: str  # 'rule:<name>', 'embedding:<cosine>', or 'default'


class Router:
    """Rules first, then nearest centroid of example-prompt embeddings, then the default."""

    def __init__(self, rules=(), default: str = BASE, embed=None, centroids=None, min_similarity: float = -1.0):
        self.rules = list(rules)
        self.default = default
        self._embed = embed
        self._centroids = centroids or {}
        self.min_similarity = min_similarity

    def adapters(self) -> set[str]:
        """Every adapter name the routes can pick."""
        return {r.adapter for r in self.rules} | set(self._centroids) | {self.default}

    def route(self, prompt: str) -> Route:
        """Which adapter serves this prompt, and why."""
        for rule in self.rules:
            if rule.matches(prompt):
                return Route(rule.adapter, f"rule:{rule.name}")
        if self._centroids:
            import numpy as np

            vec = self._embed([prompt])[0]
            names = list(self._centroids)
            sims = np.array([float(vec @ self._centroids[n]) for n in names])
            best = int(sims.argmax())
            if sims[best] >= self.min_similarity:
                return Route(names[best], f"embedding:{sims[best]:.3f}")
        return Route(self.default, "default")


def _rule(i: int, item) -> Rule:
    if not isinstance(item, dict) or "adapter" not in item:
        raise ConfigError("rules", f"rule #{i + 1} must be a mapping with an 'adapter' key, got {item!r}")
    unknown = set(item) - {"adapter", "name", "regex", "all", "any", "none"}
    if unknown:
        raise ConfigError("rules", f"rule #{i + 1} has unknown keys {sorted(unknown)}")
    for key in ("all", "any", "none"):
        if key in item and not (isinstance(item[key], list) and all(isinstance(p, str) for p in item[key])):
            raise ConfigError("rules", f"rule #{i + 1}: '{key}' must be a list of strings")
    return Rule(**item)


def build_router(spec: dict | None, embedder_loader=None) -> Router:
    """A Router from the parsed routes mapping (see the module docstring); None = everything to the default."""
    spec = dict(spec or {})
    unknown = set(spec) - {"rules", "embedding", "default"}
    if unknown:
        raise ConfigError("routes", f"unknown keys {sorted(unknown)}; expected rules, embedding, default")
    rules = [_rule(i, item) for i, item in enumerate(spec.get("rules") or [])]
    default = spec.get("default", BASE)
    emb = spec.get("embedding")
    if not emb:
        return Router(rules, default)
    examples = emb.get("examples") if isinstance(emb, dict) else None
    if (
        not isinstance(examples, dict)
        or not examples
        or not all(isinstance(v, list) and v and all(isinstance(p, str) for p in v) for v in examples.values())
    ):
        raise ConfigError("embedding", "needs 'examples': {adapter: [prompt, ...]} with at least one prompt each")
    if embedder_loader is None:
        from ..embed import load_embedder as embedder_loader
    embed = embedder_loader(emb.get("embedder"))
    centroids = {}
    for name, prompts in examples.items():
        c = embed(prompts).mean(axis=0)
        centroids[name] = c / max(float((c**2).sum()) ** 0.5, 1e-12)
    return Router(rules, default, embed, centroids, float(emb.get("min_similarity", -1.0)))


def load_routes(path: str | Path | None) -> dict | None:
    """The routes mapping (rules / embedding / default) from a YAML file (None -> None)."""
    if path is None:
        return None
    from ..io import read_yaml_mapping

    return read_yaml_mapping(path, lambda message: ConfigError("routes", message)) or None
