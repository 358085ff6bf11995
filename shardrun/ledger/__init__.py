"""The ledger: a local SQLite projection of the journal (schema, fold, summaries, queries).
"""
