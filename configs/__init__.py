"""Data files shipped with shardrun (platforms, throughput profiles, the source paper's figures)."""
