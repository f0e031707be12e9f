"""A CoAP server with aiocoap, as an unmodified program writes it (tests of the guard's aiocoap hook).

usage: ix_aiocoap_server.py PORT    Prints "READY" once serving; GET coap://127.0.0.1:PORT/pid answers the pid.
"""

from __future__ import annotations

import asyncio
import os
import sys

# aiocoap ships no type information.
import aiocoap  # type: ignore[import-untyped]
import aiocoap.resource as resource  # type: ignore[import-untyped]


class Pid(resource.Resource):  # type: ignore[misc]  # a class of an untyped package
    async def render_get(self, request: aiocoap.Message) -> aiocoap.Message:
        return aiocoap.Message(payload=b"pid %d" % os.getpid())


async def main() -> None:
    site = resource.Site()
    site.add_resource(["pid"], Pid())
    await aiocoap.Context.create_server_context(site, bind=("127.0.0.1", int(sys.argv[1])))
    print("READY", os.environ.get("AIOCOAP_REUSE_PORT"), flush=True)
    await asyncio.get_running_loop().create_future()


if __name__ == "__main__":
    asyncio.run(main())
