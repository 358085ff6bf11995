"""The `shardrun` command line: one module per command family, thin adapters over the library.

The only wing (with render/) that imports click or rich, and the only one that prints or exits.
"""
