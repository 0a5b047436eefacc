"""The application shown in the README, served by the CLI test."""

from __future__ import annotations

from server import Context, Steward

app = Steward("weather")


@app.tool(scopes={"mcp:tools"}, min_tier="pro")
async def forecast(ctx: Context, city: str, days: int = 3) -> str:
    await ctx.progress(1, 2, "looking it up")
    return f"sunny in {city} for {days} days ({ctx.user.tier} account)"
