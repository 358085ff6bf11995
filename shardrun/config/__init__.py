"""The TOML files as typed objects: the job file, platforms, throughput profiles, prices, and
the source paper's figures.
"""
