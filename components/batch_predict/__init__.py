"""Batch prediction: a whole catalog through a trained model, as a Beam job (`job.py`, `model.py`), its
command line (`command.py`: `python -m pipeline predict-catalog`) and the HTML summary of a run
(`summary.py`).

The output layout below lives here, not in job.py, so that importing it does not import Beam's
TensorFlow handler (and TensorFlow); the record's fields, the formats and the default batch size are
common.features', which the pipeline's parameters (common/params.py) use too.
"""

# The output layout under the command's DIR.
PREDICTIONS_DIR = "predictions"
QUARANTINE_FILE = "quarantine.jsonl"
METRICS_FILE = "metrics.json"
