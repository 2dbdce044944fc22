"""The worker's tests, in folders mirroring worker/ (engine, jobs, serverless); their shared helpers
(real audio, a real HTTP server, the tiny real engine) live in jobkit.py beside this file."""

from __future__ import annotations

import sys
from pathlib import Path

# The subfolders are not packages (as in the rest of tests/): make `from jobkit import ...` work there.
sys.path.insert(0, str(Path(__file__).resolve().parent))
