"""The RunPod worker (F5-TTS + WhisperX) and its bootstrap.

Keep this package's import free of heavy dependencies: ``worker.bootstrap`` runs in the slim image
with the stdlib and a few small wheels only.
"""
