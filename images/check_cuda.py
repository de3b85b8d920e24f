"""Build-time check of the trainer image (images/trainer.Dockerfile): TensorFlow is a CUDA build and
the CUDA and cuDNN libraries it opens when it looks for a GPU load from the pinned wheels. Loading
them needs no GPU and no driver, so a broken image fails its build rather than training on the CPU.
"""
import ctypes
import sys

import tensorflow as tf

# The sonames of images/requirements-cuda.txt's CUDA 12 / cuDNN 9 wheels that TensorFlow dlopens.
LIBRARIES = (
    "libcudart.so.12",
    "libcublas.so.12",
    "libcublasLt.so.12",
    "libcudnn.so.9",
    "libcufft.so.11",
    "libcurand.so.10",
    "libcusolver.so.11",
    "libcusparse.so.12",
    "libnvrtc.so.12",
    "libnvJitLink.so.12",
)

build = tf.sysconfig.get_build_info()
if not build.get("is_cuda_build"):
    sys.exit(f"TensorFlow {tf.__version__} is not a CUDA build")
if build["cudnn_version"].split(".")[0] != "9" or build["cuda_version"].split(".")[0] != "12":
    sys.exit(f"TensorFlow was built with CUDA {build['cuda_version']}, cuDNN {build['cudnn_version']}: "
             "pin the matching wheels in images/requirements-cuda.txt")
failed = []
for library in LIBRARIES:
    try:
        ctypes.CDLL(library)
    except OSError as e:
        failed.append(f"{library}: {e}")
if failed:
    sys.exit("CUDA libraries that do not load:\n" + "\n".join(failed))
print(f"TensorFlow {tf.__version__}: CUDA {build['cuda_version']}, cuDNN {build['cudnn_version']}, libraries load")
