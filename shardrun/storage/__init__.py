"""Stores: the contract (base), the backends (local, memory, drive), the typed account a store
is opened for (account), and the registry that finds a URL's backend and opens its store.
"""
