"""The server's job service: load reports, the entry's dispatch, the
executor's runs, durable results and their replay (``service`` ties them to
a ``MeshServer``). Imports the relay below it and ``crc.jobs``; never the
client."""
