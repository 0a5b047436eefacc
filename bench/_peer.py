"""The performance peer: the official MCP Python SDK server with one echo tool.

Run as a script: ``python -m bench._peer PORT [json|sse]``.
"""

from __future__ import annotations

import sys


def main() -> None:
    from mcp.server.mcpserver import MCPServer

    port = int(sys.argv[1])
    json_response = len(sys.argv) > 2 and sys.argv[2] == "json"
    mcp = MCPServer("echo-peer", log_level="WARNING")

    @mcp.tool()
    def echo(text: str) -> str:
        return text

    mcp.run(
        "streamable-http",
        host="127.0.0.1",
        port=port,
        stateless_http=False,
        json_response=json_response,
    )


if __name__ == "__main__":
    main()
