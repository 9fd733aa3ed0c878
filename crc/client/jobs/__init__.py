"""The client's job engine: submitting jobs, following their output,
collecting what they produce (``engine``), and building Rakefiles
(``build``). Imports the chat client's core and ``crc.jobs``; never the
server."""
