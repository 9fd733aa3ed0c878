"""``python -m crc.cc gcc ...``: the same program as ``meshcc.py``.

Only a call to ``crc.entry.meshcc``: no flags or wiring of its own.
"""

import sys

from ..entry import meshcc

sys.exit(meshcc())
