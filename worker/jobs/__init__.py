"""The job layer, in the order a job goes through it: ``schema`` (input -> typed request), ``tasks``
(the work of each task on the engine: reference, synthesis, alignment, transcription), then delivery
(``audio`` encodes, ``subtitles`` renders; ``urlfetch`` and ``voices`` bring audio in).

Transport-neutral: the runpod glue (``worker.queue``) and any other front end share it. May import
``worker.errors``, ``worker.settings`` and the engine's value types; never the runpod SDK.
"""
