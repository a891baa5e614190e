"""WSGI entry point for gunicorn: `gunicorn -c gunicorn.conf.py cds_service.wsgi:app`."""
from . import create_app

app = create_app()
