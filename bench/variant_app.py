"""The service with the patches of bench/variants.py that the environment asks for.

    BENCH_PROJECTOR_DELAY=0.2 gunicorn --config gunicorn.conf.py bench.variant_app:app

Used by bench/run.py ``--variant`` targets; see bench/variants.py for the knobs.
"""

from __future__ import annotations

from bench.variants import apply

apply()

from wsgi import app  # noqa: E402  (after the patches: create_app starts the projector)

__all__ = ["app"]
