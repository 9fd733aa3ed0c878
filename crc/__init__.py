"""CRC Mesh: relay servers linked into a spanning tree, carrying chat and build jobs.

Layout, lowest layer first: ``protocol`` (wire codec, no I/O), ``routing``
(who is reached through which link, pure data) and ``delivery`` (reliable
chat: outbox, inbox, journal), ``net`` (the selectors event loop and
connections), ``jobs`` (what both sides of job traffic share), ``server`` (the
relay, with its job service in ``server.jobs``), ``client`` (client core and
terminal UI), ``scenarios`` (the scenario test manager). Shared helpers:
``options`` (command-line values), ``credentials`` (TLS and secret files),
``visible`` (remote text made safe to show), ``entry`` (the programs' entry
points), ``compat`` (the CRC v1 runner's class names).

A module imports only from its own layer or below, and from the shared
helpers: the server never imports the client, the client never imports the
server, and ``jobs`` imports neither. ``compat`` is the exception among the
helpers: it sits above the server and the client, and nothing in ``crc``
imports it.
"""

__version__ = "0.1.0"
