"""``python -m crc.client``: the same program as its top-level script."""

import sys

from ..entry import chat

sys.exit(chat())
