"""The Google Drive store (`drive://<folder-id>`): the store itself, its API client, sign-in and
resumable transfers.
"""
