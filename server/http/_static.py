"""The public files every Steward page uses: its style sheet and its icon.

Served without a token by Steward (``/static/steward.css``, ``/favicon.ico``) and by the
development IdP for its sign-in page: the pages' Content-Security-Policy allows styles and images
from their own origin only (no inline style, nothing from elsewhere). The style sheet is the
admin view's (server/admin_static/admin.css): the consent, refusal and sign-in pages share its
look.
"""

from __future__ import annotations

import functools
from pathlib import Path

from server.http._plumbing import Send, send_response

__all__ = ["PAGE_HEAD", "send_public_file"]

STATIC_DIR = Path(__file__).parent.parent / "admin_static"
STYLE = "/static/steward.css"
ICON = "/favicon.ico"
_FILES = {
    STYLE: ("admin.css", b"text/css; charset=utf-8"),
    ICON: ("favicon.ico", b"image/x-icon"),
}
# the <head> lines of a page in Steward's look
PAGE_HEAD = (
    '<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">'
    f'<link rel="stylesheet" href="{STYLE}"><link rel="icon" href="{ICON}">'
)


@functools.cache
def _read(name: str) -> bytes:
    return (STATIC_DIR / name).read_bytes()


async def send_public_file(send: Send, method: str, path: str) -> bool:
    """Answer a GET of a public file; False (nothing sent) for any other request."""
    found = _FILES.get(path)
    if found is None or method != "GET":
        return False
    name, content_type = found
    await send_response(
        send, 200, _read(name), content_type, [(b"cache-control", b"public, max-age=3600")]
    )
    return True
