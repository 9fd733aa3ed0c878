"""``python -m crc.scenarios``: the same program as its top-level script.

Only a call to ``crc.entry.testmanager``: no flags or wiring of its own.
"""

import sys

from ..entry import testmanager

sys.exit(testmanager())
