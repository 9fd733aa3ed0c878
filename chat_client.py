#!/usr/bin/env python3
"""Chat on a CRC Mesh network from a terminal or a script. See `python chat_client.py --help`."""

import sys

from crc.entry import chat

if __name__ == "__main__":
    sys.exit(chat())
