"""The server's job service: load reports (``reports``), the entry's
dispatch (``entry``), the executor's runs (``executor``), durable results
and their replay (``results``, ``replay``); ``service`` ties them to a
``MeshServer``, ``frames`` reads job frames and ``jobdir`` is a job's
working directory. Imports the relay below it and ``crc.jobs``; never the
client. Nothing here blocks or starts a thread: child processes, their
pipes and exits are selector events like sockets."""
