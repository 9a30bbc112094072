"""How long can a server that drips one byte a second hold one proposer request? (issue 26's figure)

The proposer's ``timeout`` is an overall deadline per request, not a per-read one: a server that keeps the
connection alive with a byte a second must still lose the request at the deadline. This starts such a server on
loopback, sends one chat request per deadline through the real client (``proposers/llm/chat_client.ChatClient``, no
retries) and prints how long each was held against the goal (deadline + 1 s).

    python benchmarks/drip_deadline.py [--deadlines 2,5]
"""

from __future__ import annotations

import argparse
import os
import socket
import threading
import time

from discopop.proposers.llm.chat_client import ChatClient, TransientError

KEY_ENV = "DRIP_BENCHMARK_KEY"


def drip_server(seconds: int) -> socket.socket:
    """A loopback server answering every request with headers, then one byte a second for ``seconds``."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)

    def drip(conn: socket.socket) -> None:
        with conn:
            conn.recv(65536)
            try:
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n")
                for _ in range(seconds):
                    conn.sendall(b" ")
                    time.sleep(1.0)
            except OSError:
                return

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=drip, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--deadlines", default="2,5", help="proposer.timeout values to try, seconds")
    args = parser.parse_args()
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        os.environ.pop(var, None)
    os.environ[KEY_ENV] = "not-a-real-key"
    server = drip_server(60)
    url = f"http://127.0.0.1:{server.getsockname()[1]}/v1"
    print(f"{'deadline s':>10} {'held s':>8} {'goal s':>7}  outcome")
    for deadline in (float(x) for x in args.deadlines.split(",")):
        client = ChatClient(model="m", base_url=url, api_key_env=KEY_ENV, timeout=deadline, max_retries=0)
        started = time.perf_counter()
        try:
            client.complete([{"role": "user", "content": "hi"}])
            outcome = "answered (unexpected)"
        except TransientError as err:
            outcome = f"gave up: {str(err)[:60]}"
        finally:
            client.close()
        held = time.perf_counter() - started
        verdict = "ok" if held <= deadline + 1 else "OVER"
        print(f"{deadline:10.1f} {held:8.2f} {deadline + 1:7.1f}  {verdict}; {outcome}")
    server.close()


if __name__ == "__main__":
    main()
