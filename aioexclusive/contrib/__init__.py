"""Thin hooks that make servers built on other frameworks exclusive.

Each submodule imports its framework when it is itself imported, never before:
``import aioexclusive`` costs nothing for people who do not use them.

* `aioexclusive.contrib.uvicorn`: ``Config`` and ``run`` for uvicorn's
  workers/reload paths (``--loop aioexclusive:new_event_loop`` covers a
  single process without this module).
* `aioexclusive.contrib.hypercorn`: ``ExclusiveConfig``, whose
  ``create_sockets`` follows the bind plan.
* `aioexclusive.contrib.aiohttp`: ``run_app`` on an exclusive loop.

anyio and pytest-asyncio need no module here: see docs/integrations.md
(``backend_options={"loop_factory": aioexclusive.new_event_loop}``) and
`aioexclusive.pytest_plugin`.
"""

from __future__ import annotations


def _v6_default_is_dualstack() -> bool:
    """Does a fresh IPv6 socket on this system accept IPv4 too (``IPV6_V6ONLY`` off by default)?

    uvicorn's ``Config.bind_socket`` and hypercorn's ``create_sockets`` never
    set ``IPV6_V6ONLY``: a ``::`` bind there is dual-stack wherever the system
    default is (Linux's ``net.ipv6.bindv6only=0``), IPv6-only where it is not
    (Windows). The exclusive configs keep exactly that.
    """
    import socket

    if not socket.has_ipv6 or not socket.has_dualstack_ipv6():
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            return probe.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    except OSError:
        return False
