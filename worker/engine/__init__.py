"""The engine: warm F5-TTS synthesis and WhisperX transcription/alignment behind one object.

``core`` is the ``Engine`` the job layer talks to (typed values in and out: ``Word``, ``Transcript``);
``tts`` drives F5-TTS (text batching, loading, the sampler, CUDA graphs; ``attention``: the key mask of
padded buckets as a broadcast attention bias; ``batching``: concurrent requests sharing one ODE), ``asr``
WhisperX;
``models`` turns model specs into local files on the volume (``model_files``: which files each loader
reads). Importing the package loads nothing heavy; ``Engine.load`` does, once. May import
``worker.errors``, ``worker.settings`` and the bootstrap's lease/fetch; never the job layer.
"""
