"""Build jobs: load sensing, scheduling, remote execution, files, Rakefiles.

What both sides of job traffic share: ``wire`` (frame kinds and payloads),
``rakefile`` (parsing and checking), ``scheduler`` (the pure ``pick``),
``load`` (load reports), ``store`` (the blob store), ``transfer`` (moving
blobs), ``process`` (child processes in the event loop), ``plain`` (shell
commands that need no shell), ``files`` (``FileRef``, ``Sweeper``) and
``leftovers`` (what a killed process left).

Imports ``crc.protocol``, ``crc.net`` and ``crc.options``; never the server
nor the client, which both build on it (``crc.server.jobs``,
``crc.client.jobs``).
"""
