"""The cluster scenario's helpdesk and the targets it breaks, in one small HTTP server on
127.0.0.1 run by the benchmark in a thread: a webhook receiver (docs/webhook.md) that records
when each incident's `open` arrived, and HTTP targets (`/target/<n>`) answering 200, or 503
once the benchmark says `fail`. The arrival is stamped by the benchmark's clock, the same wall
clock the agents stamp their results with.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from bench.proc import Processes


class Desk:
    def __init__(self, processes: Processes) -> None:
        self.opened: dict[str, float] = {}  # incident key → when its open arrived
        self.failing: set[int] = set()
        self._lock = threading.Lock()
        desk = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                number = self.path.rsplit("/", 1)[-1]
                down = number.isdigit() and int(number) in desk.failing
                self._answer(503 if down else 200)

            def do_POST(self) -> None:
                arrived = time.time()
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body.get("action") == "open":
                    with desk._lock:
                        desk.opened.setdefault(body["key"], arrived)
                self._answer(200)

            def _answer(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "3")
                self.end_headers()
                self.wfile.write(b"ok\n")

            def log_message(self, format: str, *args: object) -> None:
                pass  # one line per request on stderr would drown the benchmark's output

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        processes.on_exit(self._server.shutdown)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def target(self, number: int) -> str:
        return f"http://127.0.0.1:{self.port}/target/{number}"

    def fail(self, numbers: Iterable[int]) -> None:
        self.failing = set(numbers)

    def arrivals(self) -> dict[str, float]:
        with self._lock:
            return dict(self.opened)
