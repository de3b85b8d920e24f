"""A training killed mid-epoch and started again with the same command continues from its backup."""
import math
import os
import re
import signal
import subprocess
import sys

import tensorflow as tf

from tests.conftest import FASHION_DIR, REPO_ROOT
from common import features
from trainer import data

BATCH_SIZE = 4
EPOCHS = 3
BACKUP_EVERY_STEPS = 3


def _command(small_preprocessed, tiny_bert_handle, root):
    return [
        sys.executable, "-m", "trainer",
        "--examples", small_preprocessed.examples_dir,
        "--transform-graph", small_preprocessed.transform_graph_dir,
        "--export-dir", str(root / "model"), "--work-dir", str(root / "work"),
        "--fusion", "text_only", "--bert-handle", str(tiny_bert_handle), "--image-weights", "",
        "--image-size", "32", "--max-seq-length", "24",
        "--text-epochs", str(EPOCHS), "--text-batch-size", str(BATCH_SIZE), "--text-learning-rate", "1e-3",
        "--backup-every-steps", str(BACKUP_EVERY_STEPS), "--log-every-steps", "1",
    ]


def test_a_run_killed_mid_epoch_resumes_from_its_last_backup_and_finishes(small_preprocessed, tiny_bert_handle,
                                                                        tmp_path):
    train_size = data.read_split_sizes(small_preprocessed.examples_dir)[features.TRAIN_SPLIT]
    steps_per_epoch = math.ceil(train_size / BATCH_SIZE)
    total = steps_per_epoch * EPOCHS
    command = _command(small_preprocessed, tiny_bert_handle, tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}

    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in first.stdout:
        seen.append(line)
        step = re.search(r"\[text_only\] step (\d+)/", line)
        if step and int(step.group(1)) >= BACKUP_EVERY_STEPS + 1:  # a backup exists; mid-epoch 1
            first.send_signal(signal.SIGKILL)
            break
    first.wait()
    assert first.returncode == -signal.SIGKILL, "".join(seen[-20:])
    assert not (tmp_path / "model" / "saved_model.pb").exists()

    second = subprocess.run(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    log = second.stdout
    assert second.returncode == 0, log[-3000:]
    resumed = int(re.search(r"\[text_only\] resuming at step (\d+)/(\d+)", log).group(1))
    assert resumed > 0 and resumed % BACKUP_EVERY_STEPS == 0  # a backup's step, not a restart from 0
    assert resumed % steps_per_epoch != 0  # ... taken mid-epoch
    # The first epoch line after the resume is the epoch it resumed in.
    after = log.split("resuming at")[1]
    assert re.search(r"\[text_only\] epoch (\d+):", after).group(1) == str(resumed // steps_per_epoch + 1)
    assert f"finished at step {total}; this run trained {total - resumed} steps" in log

    model = tf.saved_model.load(str(tmp_path / "model"))
    out = model.signatures[features.SERVING_SIGNATURE](
        title=tf.constant(["Turtle Check Men Navy Blue Shirt"]),
        image_bytes=tf.constant([(FASHION_DIR / "images" / "15970.jpg").read_bytes()]),
    )
    assert out[features.OUTPUT_SCORES_KEY].shape == (1, features.DEFAULT_TOP_K)
    assert (tmp_path / "work" / "stages" / "text_only" / "done.json").exists()
