"""shardrun: long super-resolution training jobs as time-boxed slices across notebook sessions."""

import os

# TensorFlow's C++ INFO and WARNING lines (one libpng warning per image whose ICC profile it
# dislikes: hundreds a session on camera photos) drown the worker's own log; errors still show.
# Set here, before any of shardrun's TensorFlow imports; a value the user set wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# absl writes what TensorFlow logs before absl is initialised (its own notice, oneDNN's INFO line)
# whatever that level says: the first `import tensorflow` holds those lines to it too.
from shardrun.tf_log import quiet_tensorflow_start  # noqa: E402 - after the level is set

quiet_tensorflow_start()

__version__ = "0.1.0"
