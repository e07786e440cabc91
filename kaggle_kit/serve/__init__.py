"""Serving: the NeurIPS LLM Efficiency Challenge HTTP API in front of LoRA adapters chosen per request."""

from .app import ServerThread, build_app, load_app, serve
from .generation import GenRequest, GenResult, generate_batch
from .routing import BASE, Route, Router, Rule, build_router, load_routes

__all__ = [
    "BASE",
    "GenRequest",
    "GenResult",
    "Route",
    "Router",
    "Rule",
    "ServerThread",
    "build_app",
    "build_router",
    "generate_batch",
    "load_app",
    "load_routes",
    "serve",
]
