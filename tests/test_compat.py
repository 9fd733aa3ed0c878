"""The CRC v1 runner's view: optparse options in, threads, request_terminate,
plain attributes out — and its raw-bytes subclass hooks."""

from __future__ import annotations

import socket
import threading
from optparse import Values

import pytest

from crc.compat import CRCClient, CRCServer
from crc.protocol import ServerRegistration, encode

from .meshkit import wait_for


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_options(sid: int, name: str, port: int, connect_port: int | None = None) -> Values:
    return Values({"id": sid, "servername": name, "port": port, "info": '"Home"',
                   "log_file": f"{name}.log",
                   "connect_to_host": "somewhere" if connect_port else None,
                   "connect_to_port": connect_port})


def client_options(cid: int, name: str, port: int) -> Values:
    return Values({"id": cid, "serverhost": "theshire", "serverport": str(port),
                   "username": name, "info": '"x"', "log_file": f"{name}.log"})


class Runner:
    """Drives machines the way the original runner does."""

    def __init__(self) -> None:
        self.threads: dict[str, tuple[object, threading.Thread]] = {}

    def launch(self, app, name: str):
        thread = threading.Thread(target=app.run)
        self.threads[name] = (app, thread)
        thread.start()
        return app

    def kill_all(self) -> None:
        for app, thread in self.threads.values():
            app.request_terminate = True
            thread.join(10)
            assert not thread.is_alive()


@pytest.fixture
def runner():
    r = Runner()
    yield r
    r.kill_all()


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_functionality_attributes_after_sequential_kill(runner: Runner) -> None:
    p1, p2 = free_port(), free_port()
    s1 = runner.launch(CRCServer(server_options(1, "theshire", p1), run_on_localhost=True), "s1")
    wait_for(lambda: listening(p1), 5, "theshire to listen")
    s2 = runner.launch(CRCServer(server_options(2, "rivendale", p2, p1), True), "s2")
    wait_for(lambda: 2 in s1.hosts_db, 5, "rivendale to join")
    frodo = runner.launch(CRCClient(client_options(101, "frodo", p1), True), "frodo")
    sam = runner.launch(CRCClient(client_options(102, "sam", p2), True), "sam")
    wait_for(lambda: 102 in frodo.connected_user_ids and 101 in sam.connected_user_ids, 5,
             "clients to see each other")
    frodo.message_other_client(102, '"Hello there"')
    frodo.message_other_client(999, "nobody")
    wait_for(lambda: sam.chat_messages_log and len(frodo.status_updates_log) == 2, 5,
             "chat and unknown-id status")
    runner.kill_all()
    # Read after every machine stopped, one after another, like the runner.
    assert sorted(s1.hosts_db) == [2, 101, 102]
    assert sorted(s2.hosts_db) == [1, 101, 102]
    assert s1.adjacent_server_ids == [2] and s1.adjacent_user_ids == [101]
    assert sam.chat_messages_log == ['"Hello there"']
    assert frodo.status_updates_log == ["Welcome to the Clemson Relay Chat network frodo",
                                        "Unknown ID 999"]
    assert list(frodo.connected_user_ids) == [102]


def test_raw_bytes_subclass_records_the_joiners_first_bytes(runner: Runner) -> None:
    """The runner's connectivity test overrides handle_messages to record only."""

    class Recording(CRCServer):
        def __init__(self, options, run_on_localhost=False):
            super().__init__(options, run_on_localhost)
            self.recvd_messages_asdqw: list[str] = []
            self.keys_seen = 0

        def handle_messages(self, select_key, recv_data):
            self.recvd_messages_asdqw.append(recv_data.hex())

        def accept_new_connection(self, sock):
            before = set(self.sel._fd_to_key)
            super().accept_new_connection(sock)
            self.keys_seen += len(set(self.sel._fd_to_key) - before)

    p1, p2 = free_port(), free_port()
    hub = runner.launch(Recording(server_options(123, "theshire", p1), True), "hub")
    wait_for(lambda: hub.listener is not None, 5, "hub to listen")
    runner.launch(CRCServer(server_options(456, "rivendale", p2, p1), True), "joiner")
    expected = encode(ServerRegistration(456, 0, "rivendale", '"Home"')).hex()
    wait_for(lambda: hub.recvd_messages_asdqw, 5, "the joiner's bytes")
    runner.kill_all()
    assert hub.recvd_messages_asdqw == [expected]
    assert hub.keys_seen == 1


def test_duplicate_ids_get_the_text_for_the_newcomers_kind(runner: Runner) -> None:
    """The runner's classes refuse every kind of newcomer with its own text:
    a client 'Someone ...', a server 'A machine ...', whoever holds the id."""
    p1, p2, p3, p4 = free_port(), free_port(), free_port(), free_port()
    s1 = runner.launch(CRCServer(server_options(1, "theshire", p1), True), "s1")
    wait_for(lambda: listening(p1), 5, "theshire to listen")
    s2 = runner.launch(CRCServer(server_options(2, "rivendale", p2, p1), True), "s2")
    frodo = runner.launch(CRCClient(client_options(101, "frodo", p1), True), "frodo")
    wait_for(lambda: sorted(s2.hosts_db) == [1, 101], 5, "rivendale and frodo to join")

    copy = runner.launch(CRCClient(client_options(101, "smeagol", p2), True), "copy")
    twin = runner.launch(CRCClient(client_options(2, "gollum", p1), True), "twin")
    mordor = runner.launch(CRCServer(server_options(2, "mordor", p3, p1), True), "mordor")
    isengard = runner.launch(CRCServer(server_options(101, "isengard", p4, p2), True),
                             "isengard")
    wait_for(lambda: all(m.status_updates_log for m in (copy, twin, mordor, isengard)), 5,
             "the four refusals")
    runner.kill_all()
    assert copy.status_updates_log == ["Someone has already registered with ID 101"]
    assert twin.status_updates_log == ["Someone has already registered with ID 2"]
    assert mordor.status_updates_log == ["A machine has already registered with ID 2"]
    assert isengard.status_updates_log == ["A machine has already registered with ID 101"]
    assert sorted(s1.hosts_db) == [2, 101] and sorted(s2.hosts_db) == [1, 101]
    assert s1.hosts_db[101].name == "frodo" and s2.hosts_db[101].name == "frodo"
    assert not mordor.hosts_db and not isengard.hosts_db
    assert not copy.connected_user_ids and not twin.connected_user_ids
    assert frodo.status_updates_log == ["Welcome to the Clemson Relay Chat network frodo"]


def test_commands_before_the_client_connected_are_lost_as_with_the_reference_client(
        runner: Runner) -> None:
    p1 = free_port()
    s1 = runner.launch(CRCServer(server_options(1, "theshire", p1), True), "s1")
    wait_for(lambda: listening(p1), 5, "theshire to listen")
    frodo = CRCClient(client_options(101, "frodo", p1), True)
    frodo.message_other_client(102, '"Hello there"')        # no socket yet: lost
    frodo.quit('"bye"')
    runner.launch(frodo, "frodo")
    wait_for(lambda: frodo.status_updates_log and 101 in s1.hosts_db, 5, "frodo's welcome")
    frodo.message_other_client(103, "after")                # connected: sent
    wait_for(lambda: len(frodo.status_updates_log) == 2, 5, "the unknown-id answer")
    runner.kill_all()
    assert frodo.status_updates_log == ["Welcome to the Clemson Relay Chat network frodo",
                                        "Unknown ID 103"]
    assert sorted(s1.hosts_db) == [101]
