#!/usr/bin/env python3
"""Run the CRC scenario files in TestCases/. See `python TestManager.py --help`."""

import sys

from crc.entry import testmanager

if __name__ == "__main__":
    sys.exit(testmanager())
