"""A tiny web service for compose examples: stdlib only, runs on the lab's base image.

Environment: ``PORT`` (listen on 0.0.0.0:PORT), ``APP_VERSION`` (baked into the
image), ``API_TOKEN`` (a secret from the project's .env: only its length is
shown), ``BROKEN=1`` (/health answers 500 and says why on stderr).

``GET /health`` -> ``{"status": "ok"}``; ``GET /version`` -> ``{"version": ...}``.
"""

import json
import os
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

VERSION = os.environ.get("APP_VERSION", "0")
BROKEN = os.environ.get("BROKEN") == "1"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        status, body = 404, {"error": "not found"}
        if self.path == "/health":
            if BROKEN:
                print(f"health: version {VERSION} cannot reach its backend", file=sys.stderr,
                      flush=True)
                status, body = 500, {"status": "failing"}
            else:
                status, body = 200, {"status": "ok"}
        elif self.path == "/version":
            status, body = 200, {"version": VERSION,
                                 "token_length": len(os.environ.get("API_TOKEN", ""))}
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


if __name__ == "__main__":
    print(f"app {VERSION} listening on port {os.environ['PORT']}", flush=True)
    ThreadingHTTPServer(("0.0.0.0", int(os.environ["PORT"])), Handler).serve_forever()
