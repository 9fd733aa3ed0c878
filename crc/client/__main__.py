"""``python -m crc.client``: the same program as its top-level script.

Only a call to ``crc.entry.chat``: no flags or wiring of its own.
"""

import sys

from ..entry import chat

sys.exit(chat())
