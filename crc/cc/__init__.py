"""meshcc: compiles of an unchanged Make or CMake build, run on the mesh.

``args`` reads a compiler command line and says whether the mesh may run it;
``compiler`` finds the real compiler and names it by its content;
``source`` turns a source into what travels (preprocessed here, built-in
macros left to the compiler there); ``wrapper`` runs one invocation: locally,
on the mesh, or locally again when the mesh cannot. Client side only: nothing
here is imported by a server, and the mesh is reached through
``crc.client``.
"""
