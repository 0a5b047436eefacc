"""The operator API: a ``Steward`` app registers tools, resources, prompts and completions;
``Context`` is what a handler sees of its call."""

from __future__ import annotations

from server.app._emitter import Emitter
from server.app._steward import (
    Context,
    InvalidArguments,
    PromptDef,
    ResourceDef,
    Steward,
    ToolDef,
    ToolError,
    check_arguments,
)
from server.app._usage_names import UsageNames

__all__ = [
    "Context",
    "Emitter",
    "InvalidArguments",
    "PromptDef",
    "ResourceDef",
    "Steward",
    "ToolDef",
    "ToolError",
    "UsageNames",
    "check_arguments",
]
