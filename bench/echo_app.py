"""The floor for served throughput: a bare Flask app that parses the same body and answers no cards.

`app` is the bare WSGI app; `bridged` is the same app behind the ASGI bridge that `cds-service serve`
runs (cds_service/asgi.py), so that the bench can tell the served stack's own cost from the service's.
"""

import orjson
from flask import Flask, Response, request

from cds_service.asgi import Bridge

app = Flask(__name__)


@app.post("/cds-services/<service_id>")
def echo(service_id):
    orjson.loads(request.get_data())
    return Response(b'{"cards":[]}', mimetype="application/json")


bridged = Bridge(app.wsgi_app, threads=8, body_read_timeout_s=10.0, max_body=5 * 1024 * 1024)
