# The CUDA image of train: TensorFlow 2.21.0 with the CUDA 12 and cuDNN 9 libraries of its `and-cuda`
# extra as pinned pip wheels (images/requirements-cuda.txt); a node supplies only the NVIDIA driver.
# Not tensorflow/tensorflow:2.21.0-gpu: since 2.18 its system cuDNN is not the one TensorFlow was
# built against and TensorFlow finds no GPU in it (tensorflow/tensorflow#62412, #94593).
# Build from the repository root:
#   docker build -f images/trainer.Dockerfile -t REGISTRY/hanet-trainer:TAG .

# Python 3.11: requirements.txt is a lock for it.
FROM python:3.11-slim-bookworm

# NVIDIA_*: what the NVIDIA container toolkit mounts into the container (the driver's compute
# libraries); GKE mounts them at /usr/local/nvidia instead. TF_USE_LEGACY_KERAS before the first
# `import tensorflow`: the trainer builds Keras 2 (tf-keras) models.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64 \
    TF_USE_LEGACY_KERAS=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    PYTHONPATH=/opt/hanet

WORKDIR /opt/hanet

# --no-deps: the lock is complete, and a resolver rejects it (see scripts/install.sh).
# TensorFlow's RUNPATH reaches only some of the wheels' libraries (not cusolver, curand, nvrtc,
# nvJitLink), so the dynamic linker learns all their directories; then the build fails unless
# TensorFlow is a CUDA build whose CUDA and cuDNN libraries load.
COPY requirements.txt images/requirements-cuda.txt images/check_cuda.py ./
RUN python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
    && python3 -m pip install --no-cache-dir pip==25.3 \
    && python3 -m pip install --no-cache-dir --no-deps -r requirements.txt -r requirements-cuda.txt \
    && python3 -c 'import glob, sysconfig; print(*sorted(glob.glob(sysconfig.get_paths()["purelib"] + "/nvidia/*/lib")), sep="\n")' \
        > /etc/ld.so.conf.d/nvidia-wheels.conf \
    && ldconfig \
    && python3 check_cuda.py

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
