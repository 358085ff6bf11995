"""`shardrun plan`: the dataset scanned, packed into shards, placed on accounts (pure), and the
plan carried out onto the stores and into the journal.
"""
