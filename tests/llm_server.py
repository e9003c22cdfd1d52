"""A small OpenAI-compatible chat server on 127.0.0.1 for tests: scripted answers, errors and delays.

With an empty script it answers like an LLM that reads the prompt's <state> block (the offline policy),
so a whole proxy search can run against it over real HTTP.
"""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from core.method.llm import STATE_RE, LocalSearchPolicy


class Server:
    def __init__(self):
        # items: ("text", str) | ("status", code, headers) | ("sleep", seconds, str) | ("trickle", seconds, str):
        # headers at once, then one byte every `seconds` | ("echo_auth", code): an error that echoes the
        # Authorization header, as some servers do
        self.script = []
        self.requests = []
        self.headers = []
        self.fingerprint = "fp_test_1"
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                outer.headers.append({k.lower(): v for k, v in self.headers.items()})
                item = outer.script.pop(0) if outer.script else ("policy",)
                if item[0] == "echo_auth":
                    self.send_response(item[1])
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    said = f"invalid key in header Authorization: {self.headers.get('Authorization')}"
                    self.wfile.write(json.dumps({"error": {"message": said, "type": "auth"}}).encode())
                    return
                if item[0] == "trickle":
                    self._trickle(item[1], item[2])
                    return
                if item[0] == "status":
                    self.send_response(item[1])
                    for k, v in (item[2] if len(item) > 2 else {}).items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(json.dumps({"error": {"message": f"scripted {item[1]}", "type": "x"}}).encode())
                    return
                if item[0] == "sleep":
                    time.sleep(item[1])
                    text = item[2]
                elif item[0] == "text":
                    text = item[1]
                else:
                    users = "\n".join(m["content"] for m in body["messages"] if m["role"] == "user")
                    retries = sum(1 for m in body["messages"] if m["role"] == "assistant")
                    text = json.dumps(LocalSearchPolicy().answer(json.loads(STATE_RE.findall(users)[-1]), retries))
                out = {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": "fake-model-v1",
                    "system_fingerprint": outer.fingerprint,
                    "choices": [
                        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                    ],
                    "usage": {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120},
                }
                data = json.dumps(out).encode()
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def _trickle(self, seconds, text):
                data = json.dumps(
                    {
                        "id": "x",
                        "object": "chat.completion",
                        "created": 0,
                        "model": "slow",
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                        ],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    for i in range(len(data)):
                        self.wfile.write(data[i : i + 1])
                        self.wfile.flush()
                        time.sleep(seconds)
                except (BrokenPipeError, ConnectionResetError):
                    pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
