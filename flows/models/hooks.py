"""Deploy hooks: tell the outside world that a new model is current.

A hook that fails raises DeployError; the deploy task then rolls the switch back and
retries, like any other deploy failure.
"""

from __future__ import annotations

import os
import shlex
import subprocess

from core.errors import DeployError
from core.specs import DeploySpec


def run_deploy_hooks(spec: DeploySpec, version: str, model_path: str) -> None:
    if spec.hook_command:
        env = {**os.environ, "RETRAIN_MODEL_VERSION": version, "RETRAIN_MODEL_PATH": model_path}
        try:
            result = subprocess.run(shlex.split(spec.hook_command), env=env, capture_output=True,
                                    text=True, timeout=spec.hook_timeout_seconds,
                                    # A session of its own: a Ctrl+C meant for the daemon
                                    # (the whole group) must not cut the deploy short.
                                    start_new_session=True)
        except FileNotFoundError:
            raise DeployError(f"deploy hook command not found: {spec.hook_command!r}; "
                              "fix deploy.hook_command") from None
        except subprocess.TimeoutExpired:
            raise DeployError(f"deploy hook {spec.hook_command!r} took longer than "
                              f"{spec.hook_timeout_seconds:.0f}s") from None
        if result.returncode != 0:
            last = (result.stderr or result.stdout).strip().splitlines()[-1:] or [""]
            raise DeployError(f"deploy hook {spec.hook_command!r} exited {result.returncode}: {last[0]}")
    if spec.hook_url:
        import httpx

        try:
            response = httpx.post(spec.hook_url, json={"version": version, "path": model_path},
                                  timeout=spec.hook_timeout_seconds)
            response.raise_for_status()
        except httpx.HTTPError as exc:
            raise DeployError(f"deploy hook POST {spec.hook_url} failed: {exc}") from None
