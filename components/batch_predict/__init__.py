"""Batch prediction: a whole catalog through a trained model, as a Beam job (`job.py`, `model.py`), its
command line (`command.py`: `python -m pipeline predict-catalog`) and the HTML summary of a run
(`summary.py`).

The names below are what the command line and the pipeline's parameters need; they live here, not in
job.py, so that importing them does not import Beam's TensorFlow handler (and TensorFlow).
"""

# The output layout under the command's DIR.
PREDICTIONS_DIR = "predictions"
QUARANTINE_FILE = "quarantine.jsonl"
METRICS_FILE = "metrics.json"
# Formats of the prediction files: JSON Lines, or Parquet for a data warehouse.
JSONL = "jsonl"
PARQUET = "parquet"
FORMATS = (JSONL, PARQUET)
# Products per call of the signature: TF Serving's max_batch_size in k8s/ is 32; offline there is no
# latency to keep, and a larger batch spreads the per-call cost further.
DEFAULT_BATCH_SIZE = 64
