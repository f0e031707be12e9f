"""Control server: plain hypercorn.config.Config with workers=2 (SO_REUSEPORT), serving examples/hypercorn_app.py."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    import hypercorn.config
    import hypercorn.run

    config = hypercorn.config.Config()
    config.bind = [sys.argv[1]]
    config.workers = 2
    config.accesslog = None
    config.errorlog = "-"
    config.graceful_timeout = 1.0
    config.application_path = "hypercorn_app:app"  # run from examples/
    sys.exit(hypercorn.run.run(config))
