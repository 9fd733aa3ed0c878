"""meshcc: compiles of an unchanged Make or CMake build, run on the mesh.

``args`` reads a compiler command line and says whether the mesh may run it;
``compiler`` finds the real compiler (and holds local slots); ``source``
turns a source into what travels (preprocessed here, built-in macros left to
the compiler there); ``direct`` is the local cache; ``wrapper`` runs one
invocation: from the cache, on the mesh, or here. The mesh is reached only
by the ``agent`` (through ``crc.client``), which every invocation asks over
``talk`` at the socket ``paths`` names. ``launcher`` builds the native
front (``launcher.c``), which leaves the whole invocation to the agent
(``front``: ``wrapper``'s own steps, run there). Client side only: nothing here is
imported by a server.
"""
