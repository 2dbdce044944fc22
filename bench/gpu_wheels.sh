#!/usr/bin/env bash
# Downloads (here, where PyPI is reachable) the wheels bench/gpu_tts.py needs on the GPU machine, whose
# image already has torch 2.11 (cu130), torchaudio, transformers, numpy, scipy, pandas, matplotlib,
# safetensors, huggingface_hub, accelerate, torchdiffeq, einops, pyyaml, requests, rich, tqdm, click.
# Everything lands in .whl/ (git-ignored), for Python 3.12 manylinux x86_64; the total must stay well
# under the 64 MiB a device call may carry. On the GPU machine:
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
#     .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD && python3 bench/gpu_tts.py
#
# `bench/gpu_wheels.sh serving`: the second set bench/gpu_serving.py needs on top (CTranslate2, PyAV,
# faster-whisper, pyannote-audio and its chain, starlette, uvicorn, python-multipart: the lock's
# versions), in .gpu2/ (add `/.gpu2/` to .git/info/exclude): CTranslate2 and PyAV as `xz -9` tars of their
# installed files (24.7 MB each instead of 43 and 36 MB of wheel), the rest as wheels, so the set fits one
# call beside the tree. Carry .gpu2 in one call and .whl plus .gpu2/wheels in the next, and install
# all wheels with ONE pip command (`--target` replaces a shared namespace directory such as
# opentelemetry/ per command, so two commands lose the first one's half):
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site2 .whl/*.whl .gpu2/wheels/*.whl
#   for f in .gpu2/*.tar.xz; do python3 -c "import tarfile,sys; tarfile.open(sys.argv[1]).extractall('/tmp/site2')" $f; done
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
py=${PYTHON:-.venv/bin/python}
if [ "${1:-}" = serving ]; then
  dest=.gpu2 tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  rm -rf "$dest" && mkdir -p "$dest/wheels"
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$tmp" ctranslate2==4.8.5 av==18.1.0 \
    faster-whisper==1.2.1 pyannote-audio==4.0.7 asteroid-filterbanks==0.4.0 \
    opentelemetry-exporter-otlp==1.45.2 opentelemetry-exporter-otlp-proto-grpc==1.45.2 \
    opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-sdk==1.45.2 \
    opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-otlp-proto-common==1.45.2 \
    opentelemetry-proto==1.45.2 opentelemetry-exporter-otlp-proto-http==1.45.2 \
    opentelemetry-exporter-http-transport==0.66b2 pyannote-core==6.1.0 pyannote-database==6.1.1 \
    pyannote-metrics==4.2.0 pyannote-pipeline==4.1.0 optuna==5.0.0 alembic==1.20.1 sqlalchemy==2.1.9 \
    mako==1.4.3 tomli==2.5.0 colorlog==6.12.0 pyannoteai-sdk==0.4.0 pytorch-metric-learning==2.9.0 \
    torch-audiomentations==0.12.0 julius==0.2.8 torch-pitch-shift==1.2.5 primepy==1.3 \
    starlette==1.10.0 uvicorn==0.54.0 python-multipart==0.0.34
  for name in ctranslate2 av; do
    mkdir "$tmp/$name.x" && (cd "$tmp/$name.x" && unzip -q "$tmp"/"$name"-*.whl)
    tar -C "$tmp/$name.x" -cf - . | xz -9 -T2 >"$dest/$name.tar.xz"
    rm "$tmp"/"$name"-*.whl
  done
  mv "$tmp"/*.whl "$dest/wheels/"
  total=$(du -cb "$dest"/*.tar.xz "$dest"/wheels/*.whl | tail -1 | cut -f1)
  echo "gpu_wheels serving: $((total / 1024 / 1024)) MiB in $dest" >&2
  exit 0
fi
dest=.whl
rm -rf "$dest" && mkdir -p "$dest"
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64)
wheels=(
  f5-tts==1.1.22 vocos==0.1.0 x-transformers==2.31.10 einx==0.4.3 loguru==0.7.3 torch-einops-utils==0.2.0
  librosa==0.11.0 audioread==3.1.0 soxr==1.1.0 soundfile==0.14.0 pooch==1.9.0 decorator==5.3.1
  rjieba==0.2.2 pypinyin==0.55.0 pydub==0.25.1
  cached_path==1.8.10 boto3==1.44.8 botocore==1.44.8 s3transfer==0.19.3 jmespath==1.1.0
  google-cloud-storage==3.17.1 google-cloud-core==2.8.0 google-api-core==2.44.0 google-auth==2.63.0
  google-resumable-media==2.11.0 google-crc32c==1.9.0 proto-plus==1.29.0 googleapis-common-protos==1.76.0
  pyasn1==0.6.5 pyasn1_modules==0.4.2 cryptography==50.0.2 cffi==2.1.1 pycparser==3.12
  opentelemetry-api==1.45.2 importlib-metadata==8.7.1 frozendict==2.5.1 platformdirs==4.14.8
  hydra-core==1.3.8 omegaconf==2.3.1
  whisperx==3.8.6 nltk==3.10.4
)
"$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" -d "$dest" "${wheels[@]}"
# Published as source only: build pure-Python wheels here.
"$py" -m pip wheel -q --no-deps -w "$dest" antlr4-python3-runtime==4.9.3 encodec==0.1.1
total=$(du -cb "$dest"/*.whl | tail -1 | cut -f1)
echo "gpu_wheels: $(find "$dest" -name "*.whl" | wc -l) wheels, $((total / 1024 / 1024)) MiB in $dest" >&2
if [ "$total" -gt $((56 * 1024 * 1024)) ]; then
  echo "gpu_wheels: over 56 MiB; split the bench (TTS and alignment) into two runs" >&2
  exit 1
fi
