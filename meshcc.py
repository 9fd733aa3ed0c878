#!/usr/bin/env python3
"""meshcc: run the compiles of an unchanged Make or CMake build on the mesh.

    make -j8 CC="meshcc gcc"            cmake -DCMAKE_C_COMPILER_LAUNCHER=meshcc ..
    CRC_MESH=host:port                   (see README, "Builds with Make and CMake")
"""
import sys

from crc.cc.wrapper import main

if __name__ == "__main__":
    sys.exit(main())
