"""After an unrecoverable failure on RunPod: answer every job with the error instead of crash-looping.

A crash-looping worker shows users nothing but a job that never starts; a worker that takes jobs and
fails each with ``{"error": "<phase>: <cause> (remedy: ...)"}`` puts the reason in the API response.
Uses the runpod SDK when it is importable; else a small stdlib version of its job loop:

- take:  GET ``RUNPOD_WEBHOOK_GET_JOB`` (``$ID`` -> ``RUNPOD_POD_ID``) + ``job_in_progress=0``,
  header ``Authorization: RUNPOD_AI_API_KEY``; 204 (or 400) = no job; 200 = a job ``{"id", "input"}``
  or a list of them.
- done:  POST the JSON result to ``RUNPOD_WEBHOOK_POST_OUTPUT`` (``$ID`` -> job id, ``$RUNPOD_POD_ID``
  -> pod id) + ``isStream=false``.
- ping:  GET ``RUNPOD_WEBHOOK_PING`` (``$RUNPOD_POD_ID`` -> pod id) every ``RUNPOD_PING_INTERVAL`` ms.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

log = logging.getLogger("fallback")

_VERSION = "bootstrap-fallback/1"


def _with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


class ErrorLoop:
    """The stdlib job loop: every job gets ``{"error": message}``."""

    def __init__(self, message: str, env: Mapping[str, str], timeout_s: float = 90.0) -> None:
        self.message = message
        self.pod_id = env.get("RUNPOD_POD_ID", "local")
        self.key = env.get("RUNPOD_AI_API_KEY", "")
        self.take_url = env["RUNPOD_WEBHOOK_GET_JOB"].replace("$ID", self.pod_id)
        self.done_url = env.get("RUNPOD_WEBHOOK_POST_OUTPUT", "").replace("$RUNPOD_POD_ID", self.pod_id)
        ping = env.get("RUNPOD_WEBHOOK_PING", "")
        self.ping_url = ping.replace("$RUNPOD_POD_ID", self.pod_id) if ping else None
        self.ping_s = max(1.0, int(env.get("RUNPOD_PING_INTERVAL") or 10000) / 1000)
        self.timeout_s = timeout_s
        self.stop = threading.Event()
        self.answered = 0

    def _request(self, url: str, data: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": self.key, "User-Agent": _VERSION}
        if data is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data else "GET")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""

    def _take(self) -> list[dict[str, Any]]:
        status, body = self._request(_with_query(self.take_url, "job_in_progress=0"))
        if status in (204, 400) or not body:
            return []
        if status != 200:
            raise OSError(f"job-take answered HTTP {status}")
        jobs = json.loads(body)
        jobs = [jobs] if isinstance(jobs, dict) else jobs
        return [j for j in jobs if isinstance(j, dict) and "id" in j]

    def _answer(self, job: dict[str, Any]) -> None:
        url = _with_query(self.done_url.replace("$ID", str(job["id"])), "isStream=false")
        payload = json.dumps({"error": self.message}, ensure_ascii=False).encode()
        status, _ = self._request(url, payload)
        if status >= 300:
            raise OSError(f"job-done answered HTTP {status}")
        self.answered += 1
        log.error("job %s answered with the bootstrap failure", job["id"])

    def _ping(self) -> None:
        while self.ping_url and not self.stop.wait(self.ping_s):
            try:
                self._request(_with_query(self.ping_url, f"job_id=&runpod_version={_VERSION}"))
            except (OSError, ValueError) as exc:
                log.warning("ping failed: %s", exc)

    def run(self, max_jobs: int | None = None) -> int:
        threading.Thread(target=self._ping, name="fallback-ping", daemon=True).start()
        delay = 0.0
        while not self.stop.is_set() and (max_jobs is None or self.answered < max_jobs):
            try:
                jobs = self._take()
                for job in jobs:
                    self._answer(job)
                delay = 0.0 if jobs else 0.2
            except (OSError, ValueError) as exc:
                delay = min(30.0, max(1.0, delay * 2))
                log.warning("job loop: %s; retrying in %.0f s", exc, delay)
            if delay:
                self.stop.wait(delay)
        self.stop.set()
        return self.answered


def serve_error(message: str, env: Mapping[str, str] | None = None, prefer_sdk: bool = True) -> None:
    """Blocks, answering jobs with ``message``. Returns only when the loop is stopped."""
    env = os.environ if env is None else env
    log.error("serving the failure to every job so it shows in the API response: %s", message)
    if prefer_sdk:
        try:
            import runpod  # type: ignore[import-not-found]
        except ImportError:
            log.info("runpod SDK not installed: using the built-in job loop")
        else:
            runpod.serverless.start({"handler": lambda job: {"error": message}})
            return
    if not env.get("RUNPOD_WEBHOOK_GET_JOB"):
        log.error("RUNPOD_WEBHOOK_GET_JOB is not set: no job queue to answer; "
                  "sleeping so RunPod shows the log")
        while True:
            time.sleep(3600)
    ErrorLoop(message, env).run()
