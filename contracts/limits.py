"""Sizes a worker's HTTP API accepts; the manager's relay of those routes enforces the same."""

MAX_JSON_BYTES = 64 * 1024
MAX_AUDIO_BYTES = 20 * 1024 * 1024   # a /humanaudio upload
MAX_FORM_BYTES = MAX_AUDIO_BYTES + 64 * 1024   # the whole /humanaudio form around it
