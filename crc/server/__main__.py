"""``python -m crc.server``: the same program as its top-level script."""

import sys

from ..entry import server

sys.exit(server())
