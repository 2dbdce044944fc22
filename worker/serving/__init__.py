"""The http mode (``WORKER_MODE=http``): the worker as its own HTTP server, for RunPod load-balancing
endpoints, with OpenAI-compatible speech and transcription routes on the same job layer as the queue
handler.

Modules: ``settings`` (the variables, read once), ``state`` (loading -> ready | failed, what ``/ping``
says), ``service`` (the one adapter onto the job layer: everything this package calls in worker/jobs.py,
worker/handler.py and worker/schema.py goes through it), ``openai`` (OpenAI request fields -> job input,
job output -> OpenAI response shapes), ``encode`` (audio as a byte stream: mp3, opus, aac, flac, wav,
pcm), ``errors`` (OpenAI's error shape), ``app`` (the Starlette routes, load shedding, streaming,
disconnects), ``server`` (uvicorn on PORT and PORT_HEALTH, the models loading behind it) and
``devserve`` (``just serve-http PORT``: tiny models, a preset voice named ``default``).
"""
