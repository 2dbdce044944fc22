"""Outputs over the response limit, to the endpoint's S3 bucket (BUCKET_ENDPOINT_URL and friends, read
by the runpod SDK's ``rp_upload``): the ``upload`` both front ends hand to ``worker.jobs.runner.Runner``."""

from __future__ import annotations

from worker.jobs.runner import Upload
from worker.settings import JobSettings


def bucket_upload(limits: JobSettings) -> Upload | None:
    """An upload into the configured bucket under ``tts/``, or None when no bucket is configured."""
    if not limits.s3_configured:
        return None

    def upload(name: str, data: bytes) -> str:
        from runpod.serverless.utils import rp_upload  # imported late: it configures logging on import

        return rp_upload.upload_in_memory_object(name, data, bucket_name=limits.bucket_name, prefix="tts")

    return upload
