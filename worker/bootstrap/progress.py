"""The download's progress line every few seconds (bytes, MB/s, ETA, files extracted so far), in the
installer's log (logger ``download``) and published to the installers waiting on the lease."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from .lease import Lease


class Progress:
    """A progress line every few seconds (bytes, MB/s, ETA), also published to lease waiters."""

    def __init__(self, downloads: Any, every_s: float, lease: Lease) -> None:
        self.downloads = downloads
        self.every_s = every_s
        self.lease = lease
        self.extractor: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        dlog = logging.getLogger("download")
        total = max(1, self.downloads.total)
        last_t, last_b = time.monotonic(), self.downloads.on_disk
        while not self._stop.wait(self.every_s):
            now, done = time.monotonic(), self.downloads.on_disk
            rate = (done - last_b) / max(1e-6, now - last_t)
            last_t, last_b = now, done
            eta = f"{(total - done) / rate:.0f} s" if rate > 0 else "?"
            msg = (f"{done / 1e6:,.1f} of {total / 1e6:,.1f} MB ({100 * done / total:.0f}%), "
                   f"{rate / 1e6:.1f} MB/s, ETA {eta}")
            if self.extractor is not None:
                st = self.extractor.stats
                msg += f"; extracted {st.files:,} files ({st.bytes / 1e6:,.1f} MB)"
            dlog.info("%s", msg)
            self.lease.set_progress({"message": msg, "bytes": done, "total": total, "time": time.time()})
