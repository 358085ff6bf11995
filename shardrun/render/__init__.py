"""Renderings for people: rich tables for the terminal and the self-contained HTML status page.

Renderers only format what the library computed; they never read a store or a ledger.
"""
