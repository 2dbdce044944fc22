"""The artifact contract, shared by the builder (``pack``), the installer (``worker.bootstrap``) and the
worker: ``manifest`` (format 1: read, write, validate) and ``files`` (sha256 hashing, atomic writes).

Standard library only: the installer imports it in the slim image, before any environment exists.
Nothing here imports ``pack`` or ``worker``.
"""
