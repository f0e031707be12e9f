"""Start-up hook for ``python -m aioexclusive run``: turns the guard on in every Python it starts.

``python -m aioexclusive run`` puts this directory first on ``PYTHONPATH``, so
Python's ``site`` module imports this file at start-up (after the ``.pth``
files, the installed ``aioexclusive_guard.pth`` included, which then already
did the same: activation runs once per process). It covers interpreters where
aioexclusive is not installed in site-packages (a checkout, another venv):
``AIOEXCLUSIVE_BOOTSTRAP_ROOT`` names the directory holding the package, used
only if ``import aioexclusive`` fails and only for that import. Then it runs the
``sitecustomize`` this one hides, if there is one.

Never raises: a program must start whatever happens here.
"""

from __future__ import annotations

import os
import sys


def _activate() -> None:
    root = os.environ.get("AIOEXCLUSIVE_BOOTSTRAP_ROOT")
    added = False
    try:
        try:
            import aioexclusive._guard as guard
        except ImportError:
            if not root:
                raise
            # At the end of sys.path and only for this import: the program's
            # own packages always win, and the package keeps its absolute
            # __path__ for the lazy imports it does later.
            sys.path.append(root)
            added = True
            import aioexclusive._guard as guard
        guard.activate_from_environment()
    except Exception as exc:  # noqa: BLE001 - start-up must go on
        sys.stderr.write(f"aioexclusive: the guard is NOT on in this process ({type(exc).__name__}: {exc})\n")
    finally:
        if added and root in sys.path:
            sys.path.remove(root)


def _chain() -> None:
    """Run the sitecustomize module this one hides on sys.path, as Python would have."""
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    others = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    try:
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", others)
        if spec is None or spec.loader is None:
            return
        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - as site.execsitecustomize reports it
        sys.stderr.write(f"Error in sitecustomize; set PYTHONVERBOSE for traceback:\n{type(exc).__name__}: {exc}\n")


_activate()
_chain()
