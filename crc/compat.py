"""The CRC v1 scenario runner's class names, as a thin adapter over the core.

The original runner builds ``CRCServer(options, run_on_localhost)`` and
``CRCClient(options, run_on_localhost)`` from optparse options, runs each
``run()`` in a thread, stops it by setting ``request_terminate = True`` and
joining, then reads plain attributes (``hosts_db``, ``status_updates_log``,
``connected_user_ids``, ...). Its raw-bytes test subclasses the server and
overrides ``handle_messages``, ``connect_to_server`` and
``accept_new_connection``, so those are the hooks the core calls here.

One behaviour differs from the core on purpose: the runner stops machines one
after another and reads every state afterwards, so a server that purged the
routes of a peer stopped a moment earlier would report a network that was
never meant to be checked. Here a closed link's routes are purged after
``LINK_LOSS_GRACE`` seconds instead of at once. The CLI server and
``TestManager.py`` purge immediately.

And as with the original reference client, which had no socket until its
``run()`` had connected, ``message_other_client`` and ``quit`` called before
the client is on the network (welcomed) are lost (logged), not queued.

Nothing in ``crc`` imports this module: it sits above the server and the
client, for the runner alone.
"""

from __future__ import annotations

import logging
from typing import Any

from .client.core import ChatClient, ClientConfig
from .net import Connection
from .routing import Kind
from .server.server import MeshServer, ServerConfig

log = logging.getLogger(__name__)

LINK_LOSS_GRACE = 0.5


class CRCServer(MeshServer):
    def __init__(self, options: Any, run_on_localhost: bool = False) -> None:
        connect = None
        if getattr(options, "connect_to_port", None):
            host = "127.0.0.1" if run_on_localhost else options.connect_to_host
            connect = (host, int(options.connect_to_port))
        super().__init__(ServerConfig(port=int(options.port), id=int(options.id or 0),
                                      name=options.servername or "", info=options.info or "",
                                      connect=connect))
        self.server_name = self.name
        self.server_info = self.info
        self.connect_to_host = getattr(options, "connect_to_host", None)
        self.connect_to_port = getattr(options, "connect_to_port", None)
        self.log_file = getattr(options, "log_file", None)
        self.sel = self.loop.selector

    # -- the runner's attributes --------------------------------------------------

    @property
    def hosts_db(self) -> dict[int, Any]:
        return dict(self.routes.hosts)

    @property
    def adjacent_server_ids(self) -> list[int]:
        return self.routes.adjacent(Kind.SERVER)

    @property
    def adjacent_user_ids(self) -> list[int]:
        return self.routes.adjacent(Kind.CLIENT)

    @property
    def status_updates_log(self) -> list[str]:
        return self.status_log

    @property
    def request_terminate(self) -> bool:
        return self.loop.stopping

    @request_terminate.setter
    def request_terminate(self, value: bool) -> None:
        if value:
            self.stop()

    def run(self) -> None:
        self.start()
        super().run()

    # -- hooks the raw-bytes runner overrides ----------------------------------------

    def accept(self, listener: Any) -> None:
        self.accept_new_connection(listener)

    def accept_new_connection(self, sock: Any) -> None:
        MeshServer.accept(self, sock)

    def connect_uplink(self, host: str, port: int) -> None:
        self.connect_to_server()

    def connect_to_server(self) -> None:
        MeshServer.connect_uplink(self, *self.config.connect)

    def on_data(self, conn: Connection, data: bytes) -> None:
        self.handle_messages(conn, data)

    def handle_messages(self, select_key: Any, recv_data: bytes) -> None:
        MeshServer.on_data(self, select_key, recv_data)

    def on_closed(self, conn: Connection, reason: str) -> None:
        if self.loop.stopping:
            return      # shutting down: what the runner reads is the view at the stop
        if conn.peer.peer_id in self.links:
            self.loop.call_later(LINK_LOSS_GRACE, MeshServer.on_closed, self, conn, reason)
        else:
            MeshServer.on_closed(self, conn, reason)


class CRCClient(ChatClient):
    def __init__(self, options: Any, run_on_localhost: bool = False) -> None:
        host = "127.0.0.1" if run_on_localhost else options.serverhost
        super().__init__(ClientConfig((host, int(options.serverport)), options.username or "",
                                      int(options.id or 0), options.info or ""))
        self.client_name = self.name
        self.log_file = getattr(options, "log_file", None)

    @property
    def connected_user_ids(self) -> dict[int, Any]:
        return dict(self.users)

    @property
    def status_updates_log(self) -> list[str]:
        return self.status_log

    @property
    def chat_messages_log(self) -> list[str]:
        return [text for _source, text in self.chat_log]

    @property
    def request_terminate(self) -> bool:
        return self.loop.stopping

    @request_terminate.setter
    def request_terminate(self, value: bool) -> None:
        if value:
            self.loop.stop()

    def run(self) -> None:
        self.start()
        super().run()

    def message_other_client(self, destination_id: int, chat_message: str) -> None:
        if not self.welcomed:       # not on the network yet: the original lost it too
            log.warning("%s: chat given before the client was welcomed: lost", self.name)
            return
        self.send_chat_threadsafe(int(destination_id), chat_message)

    def quit(self, quit_message: str = "") -> None:  # type: ignore[override]
        if not self.welcomed:
            log.warning("%s: quit given before the client was welcomed: lost", self.name)
            return
        self.loop.call_soon_threadsafe(ChatClient.quit, self, quit_message, True)
