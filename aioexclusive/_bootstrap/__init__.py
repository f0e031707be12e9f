"""The directory ``python -m aioexclusive run`` puts on PYTHONPATH (see sitecustomize.py)."""
