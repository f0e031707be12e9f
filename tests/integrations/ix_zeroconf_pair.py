"""Two python-zeroconf responders on one host (run inside a private network namespace by the test).

Prints "BOUND <n>" with the number of responders that could bind the mDNS port, then exits 0;
an exception (the guard refusing the bind) exits non-zero.
"""

from __future__ import annotations

import zeroconf

first = zeroconf.Zeroconf(interfaces=["127.0.0.1"], ip_version=zeroconf.IPVersion.V4Only)
second = zeroconf.Zeroconf(interfaces=["127.0.0.1"], ip_version=zeroconf.IPVersion.V4Only)
print("BOUND 2", flush=True)
second.close()
first.close()

# Every other port stays exclusive: a shareable UDP bind elsewhere is still judged by the guard.
import socket  # noqa: E402

other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    other.bind(("127.0.0.1", 5354))
except ValueError as exc:  # ExclusivityError under raise
    print("OTHER refused", type(exc).__name__, flush=True)
else:
    print("OTHER REUSEADDR", other.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), flush=True)
finally:
    other.close()
