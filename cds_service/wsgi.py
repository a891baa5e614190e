"""WSGI entry point for gunicorn: `gunicorn -c gunicorn.conf.py cds_service.wsgi:app`."""

from . import create_app
from .logs import configure_logging

configure_logging()
app = create_app()
