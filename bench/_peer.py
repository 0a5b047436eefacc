"""The performance peer: the official MCP Python SDK server (mcp 2.3.0) with one echo tool.

Run in its own process (see ``bench._servers.peer``)::

    python -m bench._peer --port PORT [--replies sse|json] [--stateless]

``--replies json`` is the SDK's ``json_response=True``; ``--stateless`` its ``stateless_http``.
The SDK's own defaults are stateful with SSE replies (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._peer")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--replies", choices=("sse", "json"), default="sse")
    parser.add_argument("--stateless", action="store_true")
    args = parser.parse_args(argv)

    from mcp.server.mcpserver import MCPServer

    mcp = MCPServer("echo-peer", log_level="WARNING")

    @mcp.tool()
    def echo(text: str) -> str:
        return text

    mcp.run(
        "streamable-http",
        host="127.0.0.1",
        port=args.port,
        stateless_http=args.stateless,
        json_response=args.replies == "json",
    )


if __name__ == "__main__":
    main()
