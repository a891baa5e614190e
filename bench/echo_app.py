"""The floor for served throughput: a bare Flask app that parses the same body and answers no cards."""

import orjson
from flask import Flask, Response, request

app = Flask(__name__)


@app.post("/cds-services/<service_id>")
def echo(service_id):
    orjson.loads(request.get_data())
    return Response(b'{"cards":[]}', mimetype="application/json")
