"""WSGI entry point: `cds-service serve` (granian) or `gunicorn -c gunicorn.conf.py cds_service.wsgi:app`."""

import gc

from . import create_app
from .logs import configure_logging

configure_logging()
app = create_app()
# Objects from start-up go to the permanent generation (fewer GC passes; copy-on-write kept under a
# preloading server), and collections are rarer while large JSON is parsed (p99 for 2 MB: 68-85 ms
# -> 18 ms; python-stack.md section 2).
gc.collect()
gc.freeze()
gc.set_threshold(50_000, 20, 100)
