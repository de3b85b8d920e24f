# The CPU image of preprocess, evaluate and push. With Beam's boot entrypoint it is also a Beam SDK
# worker image, so a portable runner (Dataflow, Flink) can run preprocess's workers in it:
# --sdk_container_image=<this image> --sdk_location=container.
# Build from the repository root:
#   docker build -f images/component.Dockerfile -t REGISTRY/hanet-components:TAG .
# The Beam image must be the Python and apache-beam versions of requirements.txt.
FROM apache/beam_python3.11_sdk:2.77.0 AS beam

# Python 3.11: requirements.txt is a lock for it.
FROM python:3.11-slim-bookworm

COPY --from=beam /opt/apache/beam /opt/apache/beam

# TF_USE_LEGACY_KERAS before the first `import tensorflow`: the stages build Keras 2 (tf-keras)
# models. PYTHONPATH: Beam workers, which do not start in WORKDIR, import the project as well.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONPATH=/opt/hanet

WORKDIR /opt/hanet

# --no-deps: the lock is complete, and a resolver rejects it (see scripts/install.sh).
COPY requirements.txt ./
RUN python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    && python3 -m pip install --no-cache-dir pip==25.3 \
    && python3 -m pip install --no-cache-dir --no-deps -r requirements.txt

# The KFP command of a containerized component, `python3 -m kfp.dsl.executor_main
# --function_to_execute NAME`, finds NAME through kfp_config.ini in its working directory.
COPY images/kfp_config.ini ./kfp_config.ini
COPY common/ common/
COPY components/ components/
COPY trainer/ trainer/
COPY pipeline/ pipeline/

# Not root. The KFP launcher puts artifacts under /gcs, /minio and /s3, which only backends with
# kubeflow/pipelines#10538 mount as emptyDirs; HOME holds Keras' and TF-Hub's download caches.
RUN useradd --uid 1000 --create-home hanet \
    && mkdir -p /gcs /minio /s3 \
    && chown hanet /gcs /minio /s3
USER 1000

ENTRYPOINT ["/opt/apache/beam/boot"]
