"""Outputs over the response limit go to an S3 bucket through runpod's ``rp_upload``.

The bucket is moto's standalone S3 server on 127.0.0.1 (the S3 REST API over real HTTP; boto3, the
presigned URL and the download are all real). No real S3 is reachable from this workplace.
"""

from __future__ import annotations

import dataclasses
import socket
import urllib.request

import boto3
import pytest
from jobkit import audio_bytes, b64, decode_b64, tiny_engine, voice_like

from worker.queue.handler import Handler
from worker.settings import JobSettings

BUCKET = "tts-outputs"
REF = b64(audio_bytes(voice_like(1.0, 16000), 16000))


@pytest.fixture(scope="module")
def s3_endpoint():
    from moto.server import ThreadedMotoServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test",
                     region_name="us-east-1").create_bucket(Bucket=BUCKET)
        yield endpoint
    finally:
        server.stop()


def test_large_output_is_uploaded_and_downloadable(s3_endpoint: str, monkeypatch) -> None:
    for name, value in {"BUCKET_ENDPOINT_URL": s3_endpoint, "BUCKET_ACCESS_KEY_ID": "test",
                        "BUCKET_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    engine, config = tiny_engine()
    base = JobSettings(voices_dir=config.volume / "none")
    job = {"id": "job-s3", "input": {"text": "Hello there. This goes to the bucket.", "seed": 4,
                                     "nfe_step": 2, "ref_audio": REF,
                                     "ref_text": "A reference.", "timestamps": True}}
    inline = Handler(engine, config, dataclasses.replace(base, max_response_bytes=50_000_000)).run(job)
    assert "audio" in inline
    tight = dataclasses.replace(base, max_response_bytes=20_000, bucket_endpoint_url=s3_endpoint,
                                bucket_name=BUCKET)
    out = Handler(engine, config, tight).run(job)
    assert "error" not in out, out
    assert "audio" not in out and out["audio_url"].startswith(f"{s3_endpoint}/{BUCKET}/tts/job-s3.wav")
    assert out["words"] == inline["words"] and out["duration"] == inline["duration"]
    with urllib.request.urlopen(out["audio_url"], timeout=30) as response:
        uploaded = response.read()
    assert decode_b64(b64(uploaded))[0].tolist() == decode_b64(inline["audio"])[0].tolist()
