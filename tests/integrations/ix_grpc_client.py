"""One real unary gRPC call to ix_grpc_server's echo service; prints the answer (the server's pid).

A process of its own: gRPC's client starts C-core threads that would stay in the test process.
usage: ix_grpc_client.py HOST PORT
"""

from __future__ import annotations

import sys

import grpc

host, port = sys.argv[1], int(sys.argv[2])
target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
with grpc.insecure_channel(target) as channel:
    print(channel.unary_unary("/ix.Echo/Echo")(b"x", timeout=30).decode(), flush=True)
