"""The http mode (``WORKER_MODE=http``): the worker as its own HTTP server, for RunPod load-balancing
endpoints, with OpenAI-compatible speech and transcription routes on the same job layer as the queue
handler.

Its variables are ``worker.settings.ServingSettings`` (and ``mode()``). Modules: ``state`` (loading ->
ready | failed, what ``/ping`` says), ``service`` (the one adapter onto the job layer: everything this
package calls in worker/jobs/ and worker/queue/handler.py goes through it), ``openai_api`` (OpenAI
request fields -> job input, job output -> OpenAI response shapes), ``encode`` (audio as a byte stream:
mp3, opus, aac, flac, wav, pcm), ``errors`` (OpenAI's error shape, under the worker's ``WorkerError``
root), ``app`` (the Starlette routes, load shedding, streaming, disconnects) and ``server`` (uvicorn on
PORT and PORT_HEALTH, the models loading behind it). The development server on tiny models
(``just serve-http PORT``) is ``devtools/serve_http.py``.
"""
