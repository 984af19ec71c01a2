"""Policies by name: one file per backend behind the async Policy contract."""

from __future__ import annotations

from thinkscale.policies.base import Capabilities, Generation, GenerationRequest, GenerationResult, Policy
from thinkscale.registry import Registry

POLICIES: Registry[Policy] = Registry("policy")


@POLICIES.register("tiny")
def _tiny(**kwargs) -> Policy:
    from thinkscale.policies.tiny import TinyPolicy

    return TinyPolicy(**kwargs)


@POLICIES.register("openai")
def _openai(**kwargs) -> Policy:
    from thinkscale.policies.openai import OpenAIPolicy

    return OpenAIPolicy(**kwargs)


@POLICIES.register("transformers")
def _transformers(**kwargs) -> Policy:
    from thinkscale.policies.transformers import TransformersPolicy

    return TransformersPolicy(**kwargs)


def get_policy(name: str, **kwargs) -> Policy:
    return POLICIES.get(name)(**kwargs)


__all__ = ["Capabilities", "Generation", "GenerationRequest", "GenerationResult", "Policy", "POLICIES", "get_policy"]
