"""Policies by name: one file per backend behind the async Policy contract."""

from __future__ import annotations

from thinkscale.policies.base import Capabilities, Generation, GenerationRequest, GenerationResult, Policy
from thinkscale.registry import Registry

POLICIES: Registry[Policy] = Registry("policy")
POLICIES.register_class("tiny", "thinkscale.policies.tiny:TinyPolicy")
POLICIES.register_class("openai", "thinkscale.policies.openai:OpenAIPolicy")
POLICIES.register_class("transformers", "thinkscale.policies.transformers:TransformersPolicy")


def get_policy(name: str, **kwargs) -> Policy:
    return POLICIES.get(name)(**kwargs)


__all__ = ["Capabilities", "Generation", "GenerationRequest", "GenerationResult", "Policy", "POLICIES", "get_policy"]
