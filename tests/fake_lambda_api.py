"""A local HTTP server answering as Lambda's Extensions API does, scripted per (method, path).
Used where the project's sandbox would be too coarse: exact answers, or an API that fails."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeLambda:
    """Records requests; answers from a script of (status, headers, body, content_type)."""

    def __init__(self):
        self.requests = []
        self.answers = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _answer(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                owner.requests.append((self.command, self.path, dict(self.headers), body))
                answer = owner.answers[(self.command, self.path)]
                status, headers, payload, content_type = answer() if callable(answer) else answer
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self.server.server_address[1]}"

    def answer(self, method, path, status, body=b"{}", headers=None, content_type="application/json"):
        self.answers[(method, "/2020-01-01/extension" + path)] = (status, headers or {}, body, content_type)

    def answer_later(self, method, path, make):
        """`make()` -> (status, headers, body, content_type), called when the request comes (may block)."""
        self.answers[(method, "/2020-01-01/extension" + path)] = make

    def close(self):
        self.server.shutdown()
        self.server.server_close()
