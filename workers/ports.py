"""Free ports for jobs that ask for any port (``0``): chosen by the worker, unique among its jobs."""
from __future__ import annotations

import socket
import threading
from collections.abc import Iterable


class PortPool:
    """Hands out ports no other process listens on and no other job of this worker holds.

    A port is free when the operating system gives it to a socket bound to port 0; it stays
    taken until :meth:`give_back`, so two jobs starting together never get the same one.
    """

    def __init__(self) -> None:
        self._taken: set[int] = set()
        self._lock = threading.Lock()

    def take(self, count: int) -> list[int]:
        ports: list[int] = []
        with self._lock:
            while len(ports) < count:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                    probe.bind(("", 0))
                    port = probe.getsockname()[1]
                if port not in self._taken:
                    self._taken.add(port)
                    ports.append(port)
        return ports

    def give_back(self, ports: Iterable[int]) -> None:
        with self._lock:
            self._taken.difference_update(ports)
