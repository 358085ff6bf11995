"""fsspec stores: `s3://bucket/prefix`, `gs://bucket/prefix` and `fsspec://PROTO/PATH` (docs/storage.md)."""
