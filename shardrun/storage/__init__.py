"""Stores: the contract (base), the backends (local, memory, drive) and the registry that opens a
store from its URL.
"""
