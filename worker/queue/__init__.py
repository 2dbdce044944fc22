"""The runpod glue of the queue mode (``WORKER_MODE=queue``, RunPod's job queue).

``handler``: parse -> dispatch -> serialize for the runpod SDK (generator or plain handler,
``refresh_worker``, uploads of oversized outputs). ``failure``: a worker that cannot start answers every
job with why. Besides ``worker.__main__`` (which starts the SDK), the only package that imports the
runpod SDK.
"""
