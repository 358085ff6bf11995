"""`shardrun status`: the ledger as a JSON-ready report, and the pure figures derived from its rows.
"""
