#!/usr/bin/env python3
"""Start a CRC Mesh relay server. See `python mesh_server.py --help`."""

import sys

from crc.entry import server

if __name__ == "__main__":
    sys.exit(server())
