"""CRC Mesh: relay servers linked into a spanning tree, carrying chat and build jobs.

Layout: ``protocol`` (wire codec, no I/O), ``routing`` (who is reached through
which link, pure data), ``net`` (the selectors event loop and connections),
``server`` (the relay), ``client`` (client core and terminal UI), ``scenarios``
(the scenario test manager), ``compat`` (the CRC v1 runner's class names).
"""

__version__ = "0.1.0"
