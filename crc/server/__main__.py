"""``python -m crc.server``: the same program as its top-level script.

Only a call to ``crc.entry.server``: no flags or wiring of its own.
"""

import sys

from ..entry import server

sys.exit(server())
