"""The worker's one exception root: every failure it expects and can name is a ``WorkerError``.

Each error carries *where* it happened, as the client or the operator names it: a job field
(``input.text``), an engine argument (``ref_audio``), a variable (``WORKER_DEVICE``) or a stage
(``job``, ``output``), and *why*; ``str()`` is ``"<where>: <why>"`` (several issues: ``"; "``-joined).
So the handler and the startup report map an error by its type and its ``where``, never by parsing its
message. Anything that is not a ``WorkerError`` is a bug or a broken environment: logged with its
traceback. Standard library only: the handler imports it without loading any model code.

    WorkerError
    ├── SettingsError   a variable the worker cannot use           (startup phase "config")
    ├── ModelError      a model spec that does not resolve or load (startup phase "models")
    ├── DeviceError     the GPU asked for is not there             (startup phase "cuda": replace the worker)
    ├── EngineError     an input the engine refuses; ``where`` is the engine's argument name
    ├── JobError        a job refused or stopped; ``where`` is ``input.<field>``, ``job`` or ``output``
    │   ├── JobInputError  (schema)   ├── AudioError (audio)    ├── VoiceError (voices)
    │   ├── UrlFetchError  (urlfetch) ├── JobTimeout (jobs)     ├── DeliveryError (jobs)
    │   └── Cancelled      (serving: the HTTP client went away; ``where`` is ``client``)
    └── ApiError        (serving) an HTTP answer in OpenAI's shape; ``where`` is its ``param``
The two ``serving`` classes live in worker/serving/errors.py, with the front end that raises them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

_NO_VALUE: Any = object()


class Issue(NamedTuple):
    """One thing wrong: where, why, and the offending value when quoting it helps (a variable's)."""

    where: str
    why: str
    value: Any = _NO_VALUE

    def __str__(self) -> str:
        if self.value is _NO_VALUE:
            return f"{self.where}: {self.why}"
        return f"{self.where}={self.value!r} {self.why}"


class WorkerError(Exception):
    """``where``: the field, variable or stage concerned; ``why``: what is wrong and what to do;
    ``value``: the offending value, quoted as ``where=value why`` (variables)."""

    def __init__(self, where: str, why: str, *, value: Any = _NO_VALUE) -> None:
        self.init(Issue(where, why, value))

    def init(self, *issues: Issue) -> None:
        self.found: tuple[Issue, ...] = issues
        self.where, self.why = issues[0].where, issues[0].why
        Exception.__init__(self, "; ".join(self.issues))

    @classmethod
    def collected(cls, issues: Sequence[Issue | tuple[str, str]]) -> WorkerError:
        """One error for every issue a validation found (it collects them all before raising)."""
        err = cls.__new__(cls)
        err.init(*(i if isinstance(i, Issue) else Issue(*i) for i in issues))
        return err

    @property
    def issues(self) -> list[str]:
        return [str(issue) for issue in self.found]

    @property
    def fields(self) -> list[str]:
        return [issue.where for issue in self.found]


class SettingsError(WorkerError):
    """An environment variable has a value the worker cannot use; ``where`` is the variable."""


class ModelError(WorkerError):
    """A model spec does not resolve to files, or its files do not load; ``where`` is the variable."""


class DeviceError(WorkerError):
    """The GPU the configuration asks for is not there: a fresh container may have one."""


class EngineError(WorkerError):
    """An input that reached the engine and that it refuses; ``where`` is the engine's argument name
    (``text``, ``ref_audio``, ``ref_text``, ``language``, ``nfe_step``, ``speed``, ``audio``)."""


class JobError(WorkerError):
    """A job the worker refuses or cannot finish; the worker keeps serving."""


class JobInputError(JobError):
    """The job input is invalid (``worker.jobs.schema``); one issue per field."""


class AudioError(JobError):
    """Job audio is missing, too large, too long or not audio."""


class VoiceError(JobError):
    """A preset voice is unknown or unreadable."""


class UrlFetchError(JobError):
    """An http(s) audio URL could not be fetched within the job's limits."""


class JobTimeout(JobError):
    """The job ran past WORKER_JOB_TIMEOUT_S."""


class DeliveryError(JobError):
    """The output is too large to return and no bucket is configured."""
