"""Development only: the dev identity provider, the dev user's sign-in and the demo app."""

from __future__ import annotations

from server.dev._demo import demo
from server.dev._idp import DevIdP
from server.dev._sign_in import DEV_USER, sign_in_dev_user

__all__ = ["DEV_USER", "DevIdP", "demo", "sign_in_dev_user"]
