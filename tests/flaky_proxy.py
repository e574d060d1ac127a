"""A TCP proxy for tests that cuts the first SSE stream it carries after a few bytes.

Used to prove that clients survive a dropped connection: the cut happens mid-stream,
exactly like a load balancer timing out or a laptop changing networks.
"""

from __future__ import annotations

import socket
import threading


class FlakyProxy:
    def __init__(self, upstream_port: int, cut_after_bytes: int = 1500, cuts: int = 1) -> None:
        self.upstream_port = upstream_port
        self.cut_after = cut_after_bytes
        self.cuts_left = cuts
        self.cuts_done = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        # Connections are kept alive and reused, so every request on it is looked at.
        state = {"cut": False}
        threading.Thread(target=self._pump, args=(client, upstream, state), daemon=True).start()
        sent = 0
        try:
            while True:
                data = upstream.recv(65536)
                if not data:
                    break
                if state["cut"] and sent + len(data) >= self.cut_after:
                    client.sendall(data[: max(0, self.cut_after - sent)])
                    self.cuts_done += 1
                    break
                client.sendall(data)
                if state["cut"]:
                    sent += len(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _pump(self, client: socket.socket, upstream: socket.socket, state: dict[str, bool]) -> None:
        try:
            while data := client.recv(65536):
                if b"/events/stream" in data and not state["cut"]:
                    with self._lock:
                        if self.cuts_left > 0:
                            self.cuts_left -= 1
                            state["cut"] = True
                upstream.sendall(data)
        except OSError:
            pass

    def close(self) -> None:
        self.server.close()
