"""A worker that cannot start stays up and answers every job with why, instead of exiting.

A worker process that exits is restarted by RunPod in a loop while its jobs wait in the queue with no
word of why. So a failure between the bootstrap's exec and the first job (a variable, a model download,
a model load, CUDA) becomes one ``StartupFailure``: the phase, the cause and the remedy, logged once as
one line, and that same line is the ``{"error": ...}`` of every job. Where a fresh container could help
(a CUDA fault, a GPU that is not visible) the answer also asks RunPod to replace the worker after the job
(``refresh_worker``): each replacement answers at least one job first, so the queue always hears why and
nothing restarts in a tight loop.

The piece is transport-neutral: ``classify`` turns an exception into a ``StartupFailure``; ``line`` and
``replace`` are all another front end (an HTTP mode) needs; ``serve_queue`` is the queue mode's (the runpod
SDK, in production and under ``--rp_serve_api`` alike).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from worker.errors import DeviceError, ModelError, SettingsError

log = logging.getLogger("worker")

# Exit codes when nobody is there to answer (a local run without runpod's API): 2 for what the user can
# fix (a variable, a model spec), 1 for the rest.
EXIT_USER = 2
EXIT_OTHER = 1

_REMEDIES = {
    "config": "fix or unset that variable in the endpoint's template (docs/worker.md lists every one), "
              "then restart the workers",
    "models": "check the variable it names: a local path that exists on the volume, or "
              "hf:<owner>/<repo>@<revision> that the hub serves (HF_TOKEN for a private repo); the next "
              "start resumes the download",
    "load": "the model files do not load with this environment: check that the variable names the right "
            "model for it (docs/worker.md), or delete its directory under <volume>/models to fetch it again",
    "environment": "the installed environment lacks a Python module the worker needs: point MANIFEST_URL at "
                   "the artifact built for this image's worker version, or, if it is that one, list the env "
                   "with `python -m worker.bootstrap doctor --volume <volume>` and delete it to reinstall",
    "warmup": "the models loaded but could not run once: check the GPU type and WORKER_DEVICE, or report it "
              "with the traceback in the log",
    "cuda": "a GPU fault or a GPU that is not visible: this worker asks to be replaced by a fresh one; if it "
            "keeps happening, choose another GPU type or CUDA version for the endpoint",
    "handler": "the job handler could not be built: report it with the traceback in the log",
}


@dataclass(frozen=True)
class StartupFailure:
    phase: str
    cause: str
    remedy: str
    replace: bool = False  # a fresh container could help: ask RunPod for one after answering
    expected: bool = True  # one of the failures a user can cause and fix; else its traceback is logged

    @property
    def line(self) -> str:
        """What the log shows and every job gets: ``<phase>: <cause> (remedy: <what to do>)``."""
        return f"worker startup failed in {self.phase}: {self.cause} (remedy: {self.remedy})"

    @property
    def exit_code(self) -> int:
        return EXIT_USER if self.expected else EXIT_OTHER

    def job_output(self) -> dict[str, Any]:
        """A new dict per job (the SDK pops fields off what a handler returns)."""
        out: dict[str, Any] = {"error": self.line}
        if self.replace:
            out["refresh_worker"] = True
        return out


def classify(exc: BaseException, phase: str) -> StartupFailure:
    """The failure of startup step ``phase`` (config, models, load, warmup, handler) as users see it:
    by the error's type (worker.errors), never by its message."""
    from worker.jobs.runner import is_fatal

    cause = " ".join(str(exc).split()) or type(exc).__name__  # one line, whatever the library wrote
    if isinstance(exc, SettingsError):
        return StartupFailure("config", cause, _REMEDIES["config"])
    if isinstance(exc, DeviceError) or is_fatal(exc):
        return StartupFailure("cuda", f"{type(exc).__name__}: {cause}", _REMEDIES["cuda"], replace=True,
                              expected=False)
    if isinstance(exc, ModelError):
        return StartupFailure("models", cause, _REMEDIES["models"])
    if isinstance(exc, ImportError):  # not the model files: the env lacks a package (artifact vs image)
        return StartupFailure(phase, f"{type(exc).__name__}: {cause}", _REMEDIES["environment"],
                              expected=False)
    # Anything else is a bug or a broken environment: say where, and what it was.
    return StartupFailure(phase, f"{type(exc).__name__}: {cause}", _REMEDIES.get(phase, _REMEDIES["handler"]),
                          expected=False)


def answers_jobs(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Is a job queue there to answer? On RunPod (its job-take URL is set) or runpod's local API
    (``--rp_serve_api``, or a realtime port). A plain local run exits instead, as a developer expects."""
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    if env.get("RUNPOD_WEBHOOK_GET_JOB") or env.get("RUNPOD_REALTIME_PORT", "0") not in ("", "0"):
        return True
    return any(a == "--rp_serve_api" or a.startswith("--rp_serve_api=") for a in argv)


def serve_queue(failure: StartupFailure, start: Callable[[dict], None] | None = None) -> None:
    """Answer every job from the queue with the failure. Blocks for as long as the SDK serves."""
    log.error("serving this failure to every job so it shows in the API response")
    if start is None:
        try:
            import runpod
        except ImportError:  # the env lost its SDK: the bootstrap's stdlib job loop speaks the protocol
            from worker.bootstrap.fallback import serve_error

            serve_error(failure.line, prefer_sdk=False)
            return
        start = runpod.serverless.start

    def handler(job: dict) -> dict:
        log.error("job %s answered with the startup failure", job.get("id", "?") if isinstance(job, dict)
                  else "?")
        return failure.job_output()

    start({"handler": handler})
