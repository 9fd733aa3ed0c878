"""``python -m crc.client.monitor``: the same program as ``crc-monitor``.

Only a call to ``crc.entry.monitor``: no flags or wiring of its own.
"""

import sys

from ...entry import monitor

sys.exit(monitor())
