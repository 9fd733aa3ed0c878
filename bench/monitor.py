"""What watching the mesh costs: messages each server receives per second
with 0, 1 and 20 ``chat_client.py monitor`` watchers on a three-server chain.

Run ``python bench/monitor.py`` (about a minute). Three ``mesh_server.py``
(m1-m2-m3, each with ``--metrics``) are started; for each count of watchers
(all connected to m2), after a few seconds to settle, the servers' own
``crc_messages_received_total`` counters are read over ten seconds. The
watchers' data rides in the load reports every server floods anyway, so m1
and m3 should see no more messages with 20 watchers than with none; m2
answers its watchers' queries (two a second each). Every process is stopped
at the end.
"""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port  # noqa: E402


def received(metrics_port: int) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) \
        .read().decode()
    return sum(s.value for fam in text_string_to_metric_families(text)
               if fam.name == "crc_messages_received" for s in fam.samples)


def main() -> int:
    ports = [free_port() for _ in range(3)]
    metrics = [free_port() for _ in range(3)]
    procs: list[subprocess.Popen] = []
    try:
        for i in range(3):
            args = [sys.executable, str(ROOT / "mesh_server.py"), "--port", str(ports[i]),
                    "--name", f"m{i + 1}", "--metrics", str(metrics[i])]
            if i:
                args += ["--connect", f"127.0.0.1:{ports[i - 1]}"]
            procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL))
            time.sleep(1.0)
        time.sleep(2.0)
        for count in (0, 1, 20):
            watchers = [subprocess.Popen(
                [sys.executable, str(ROOT / "chat_client.py"), "--server",
                 f"127.0.0.1:{ports[1]}", "monitor"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL) for _ in range(count)]
            try:
                time.sleep(3.0)
                before, start = [received(m) for m in metrics], time.monotonic()
                time.sleep(10.0)
                after, elapsed = [received(m) for m in metrics], time.monotonic() - start
            finally:
                for w in watchers:
                    w.terminate()
                for w in watchers:
                    w.wait(30)
            rates = [round((a - b) / elapsed, 1) for a, b in zip(after, before)]
            print(f"{count:>2} watcher(s): messages received per second at m1 {rates[0]}, "
                  f"m2 (the watchers' server) {rates[1]}, m3 {rates[2]}", flush=True)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
