"""A small demo application, served by ``steward serve`` without ``--app``."""

from __future__ import annotations

import trio
import trio.lowlevel

from server.app import Context, Steward, ToolError

__all__ = ["demo"]

demo = Steward("steward-demo", "0.1.0", instructions="A demo MCP server run by Steward.")


@demo.tool(scopes={"mcp:tools"})
async def echo(ctx: Context, text: str) -> str:
    """Echo the text back."""
    return text


@demo.tool()
async def whoami(ctx: Context) -> dict[str, object]:
    """Who Steward thinks you are: user, tier and scopes."""
    return {"user": ctx.user.user_id, "tier": ctx.user.tier, "scopes": sorted(ctx.user.scopes)}


@demo.tool()
async def add(ctx: Context, a: float, b: float) -> str:
    """Add two numbers."""
    return str(a + b)


@demo.tool()
async def count(ctx: Context, to: int = 3) -> str:
    """Count up, reporting progress and logging each step."""
    if not 1 <= to <= 100:
        raise ToolError("to must be between 1 and 100")
    for i in range(1, to + 1):
        await ctx.progress(i, to, f"step {i}")
        await ctx.log("info", f"counted {i}")
        await trio.lowlevel.checkpoint()
    return f"counted to {to}"


@demo.tool(min_tier="pro")
async def report(ctx: Context, topic: str) -> str:
    """A report for pro and enterprise accounts."""
    return f"report on {topic} for {ctx.user.user_id}"


@demo.resource("demo://readme", mime_type="text/markdown")
async def readme(ctx: Context) -> str:
    """About this server."""
    return "# Steward demo\nTools: echo, whoami, add, count, report."


@demo.tool()
async def touch_readme(ctx: Context) -> str:
    """Tell the readme's subscribers it changed (notifications/resources/updated)."""
    here = await ctx.resource_updated("demo://readme")
    return f"subscribers told: {here} here, the others through the database"


@demo.resource_template("demo://users/{name}")
async def user_card(ctx: Context, name: str) -> str:
    """A card for a user name."""
    return f"user {name}"


@demo.prompt()
async def greet(ctx: Context, name: str) -> str:
    """Greet someone."""
    return f"Say hello to {name}."


@demo.completion("ref/prompt", "greet")
async def complete_name(
    ctx: Context, argument: str, value: str, context: dict[str, object]
) -> list[str]:
    return [n for n in ("alice", "bob", "carol") if n.startswith(value)]


@demo.tool()
async def profile(ctx: Context) -> dict[str, object]:
    """Whether Steward holds a valid upstream token for you (never shows the token)."""
    token = await ctx.upstream_token()
    return {"user": ctx.user.user_id, "upstream_token_length": len(token)}
