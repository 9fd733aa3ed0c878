"""The client's job engine: submitting jobs, following their output,
collecting what they produce (``engine``), and building Rakefiles
(``build``); ``state`` is what a job is to the client, plain data.
Imports the chat client's core and ``crc.jobs``; never the server.
Everything here runs in the client's event loop and prints nothing."""
