"""``python -m server.cli``: the ``steward`` command."""

from __future__ import annotations

import sys

from server.cli._main import main

sys.exit(main())
