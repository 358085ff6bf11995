"""Training: models, the input pipeline, metrics and the resumable trainer (TensorFlow)."""

import os

# TensorFlow's C++ INFO and WARNING lines (oneDNN notices, and one libpng warning per image whose
# ICC profile it dislikes: hundreds a session on camera photos) drown the worker's own log; errors
# still show. Every TensorFlow import in shardrun is under this package, so this runs first; a
# value the user set wins.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
