"""The bind plan and the loop machinery, for tools and tests built on aioexclusive.

Applications do not need this module: ``aioexclusive.new_event_loop``,
``aioexclusive.run`` and ``aioexclusive.bind_socket`` apply the plan for them.
It is public and documented for whoever inspects or reuses the rules (a
framework that binds its own sockets, an audit tool, a test suite). The
implementation lives in private modules; these are the same objects.

The bind plan (pure data and pure functions, no sockets; docs/rules.md is the
table in prose):

* `Role`: what a socket is for (TCP listener, UDP unicast, UDP multicast,
  client with a fixed local port, AF_UNIX listener); one row of the table each.
* `Platform`: the plan's platform families, ``"windows"``, ``"linux"``,
  ``"bsd"`` (macOS and the BSDs); `PLATFORMS` lists them.
* `Rule`: one cell of the table: the options to set before ``bind``, the
  options that must stay off, where to bind, and why.
* `RULES`: the whole table, ``{(platform, role): Rule}``
  (``python -m aioexclusive plan`` prints it).
* `current_platform`: the platform family of this interpreter (or of a given
  ``sys.platform`` value).
* `make_plan`: the `BindPlan` for one request (role, ``reuse_address``,
  ``reuse_port``, the loop's ``allow_reuse_port``), or `ExclusivityError`
  when the request would let another socket share the port.
* `BindPlan`: what to do with one socket before ``bind``.
* `audit_socket_options`: check option values read back from a socket
  against a plan; `ExclusivityError` when a sharing option is on.

The loop machinery:

* `LoopOptions`: the options an exclusive loop was built with
  (``loop.exclusive_options``).
* `exclusive_loop_class`: the exclusive subclass of any loop class, made once
  per base (``aioexclusive.new_event_loop(base)`` builds one of these).
"""

from __future__ import annotations

from ._loops import LoopOptions, exclusive_loop_class
from ._plan import (
    PLATFORMS,
    RULES,
    BindPlan,
    Platform,
    Role,
    Rule,
    audit_socket_options,
    current_platform,
    make_plan,
)

__all__ = [
    "PLATFORMS",
    "RULES",
    "BindPlan",
    "LoopOptions",
    "Platform",
    "Role",
    "Rule",
    "audit_socket_options",
    "current_platform",
    "exclusive_loop_class",
    "make_plan",
]
