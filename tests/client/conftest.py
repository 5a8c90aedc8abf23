"""The Python client is imported from this repository's clients/python (not an installed copy), so
the tests always check the client that ships next to this service."""

from __future__ import annotations

import sys
from pathlib import Path

CLIENT_SRC = Path(__file__).resolve().parents[2] / "clients" / "python"
if str(CLIENT_SRC) not in sys.path:
    sys.path.insert(0, str(CLIENT_SRC))
