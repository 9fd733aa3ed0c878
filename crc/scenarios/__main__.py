"""``python -m crc.scenarios``: the same program as its top-level script."""

import sys

from ..entry import testmanager

sys.exit(testmanager())
