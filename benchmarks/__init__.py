"""Benchmarks: what does exclusivity cost compared with the same base loop?

aioexclusive only changes how listening sockets are bound, so the data path
should be the base loop's own and the bind path close to it. Every benchmark
here runs the same workload on a plain base loop (``asyncio.SelectorEventLoop``
or ``uvloop.Loop``) and on the exclusive loop built on that base
(``aioexclusive.new_event_loop(base=...)``), in one process, alternating the
order A B B A A B ... so that drift in machine load hits both sides alike, and
reports the ratio exclusive / plain of each adjacent pair.

Run ``python -m benchmarks --help`` from the repository root.
Everything goes over loopback; nothing here asserts a timing.
"""
