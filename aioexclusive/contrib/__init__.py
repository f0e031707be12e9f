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
