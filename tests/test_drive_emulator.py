"""The Drive emulator behaves like Drive v3, checked through the real google-api-python-client."""

from __future__ import annotations

import io
import os

from googleapiclient.http import MediaIoBaseUpload


def test_a_resumable_upload_lands_in_a_shared_folder_and_counts_against_its_creator(drive_emulator):
    drive_emulator.add_account("alice@example.com", token="tok-alice")
    drive_emulator.add_account("bob@example.com", token="tok-bob")
    folder = drive_emulator.create_folder("alice@example.com", "shardrun")
    drive_emulator.share(folder, "bob@example.com", role="writer")
    data = os.urandom(600_000)
    media = MediaIoBaseUpload(io.BytesIO(data), "application/octet-stream", resumable=True, chunksize=256 * 1024)
    created = drive_emulator.service("bob@example.com").files().create(
        body={"name": "a.bin", "parents": [folder]}, media_body=media, fields="id,size").execute()
    assert created["size"] == str(len(data))
    assert drive_emulator.read(created["id"]) == data
    assert drive_emulator.usage("bob@example.com") == len(data)
    assert drive_emulator.usage("alice@example.com") == 0
