"""shardrun: long super-resolution training jobs as time-boxed slices across notebook sessions."""

__version__ = "0.1.0"
