from __future__ import annotations

import json
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from core.errors import DeployError
from core.specs import DeploySpec
from flows.models.hooks import run_deploy_hooks


def test_command_hook_gets_version_and_path(tmp_path: Path) -> None:
    out = tmp_path / "hook.txt"
    script = tmp_path / "hook.py"
    script.write_text("import os, sys\nopen(sys.argv[1], 'w').write("
                      "os.environ['RETRAIN_MODEL_VERSION'] + ' ' + os.environ['RETRAIN_MODEL_PATH'])\n")
    spec = DeploySpec(hook_command=f"{sys.executable} {script} {out}")
    run_deploy_hooks(spec, "v0007", "/models/v0007")
    assert out.read_text() == "v0007 /models/v0007"


@pytest.mark.parametrize("command, message", [
    ("false", "exited 1"),
    ("definitely-not-a-command-xyz", "not found"),
    ("sleep 5", "longer than"),
])
def test_failing_command_hook_raises_one_line(command: str, message: str) -> None:
    spec = DeploySpec(hook_command=command, hook_timeout_seconds=0.5)
    with pytest.raises(DeployError, match=message) as info:
        run_deploy_hooks(spec, "v0001", "/m")
    assert "\n" not in str(info.value)


def test_url_hook_posts_version_and_fails_on_error_status() -> None:
    received: list[dict] = []
    codes = [200, 500]

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(codes.pop(0))
            self.end_headers()

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        spec = DeploySpec(hook_url=f"http://127.0.0.1:{server.server_port}/reload")
        run_deploy_hooks(spec, "v0002", "/models/v0002")
        assert received == [{"version": "v0002", "path": "/models/v0002"}]
        with pytest.raises(DeployError, match="500"):
            run_deploy_hooks(spec, "v0003", "/models/v0003")
    finally:
        server.shutdown()
