"""tuspy (PyPI `tuspy`) against ferryd's tus endpoint, for the end-to-end tests
(tests/tests/e2e/tus.rs). One run per call:

    tuspy_client.py ENDPOINT FILE TOKEN start STATE STOP_AT   # upload until STOP_AT, save the URL
    tuspy_client.py ENDPOINT FILE TOKEN resume STATE          # a new process finishes it

Every PATCH carries `Upload-Checksum` (tuspy's upload_checksum, sha1). The server's
self-signed certificate is not verified (loopback only). Prints the offset the server reported
when the run began, as JSON.
"""

import json
import sys

from tusclient import client

endpoint, path, token, mode, state = sys.argv[1:6]
tus = client.TusClient(endpoint, headers={"Authorization": f"Bearer {token}"})
common = dict(
    chunk_size=3 * 1024 * 1024 + 17,
    verify_tls_cert=False,
    upload_checksum=True,
    metadata={"filename": path.rsplit("/", 1)[-1]},
)
if mode == "start":
    uploader = tus.uploader(path, **common)
    uploader.upload(stop_at=int(sys.argv[6]))
    with open(state, "w") as f:
        f.write(uploader.url)
    print(json.dumps({"url": uploader.url, "offset": uploader.offset}))
else:
    with open(state) as f:
        url = f.read().strip()
    uploader = tus.uploader(path, url=url, **common)
    began = uploader.get_offset()
    uploader.upload()
    print(json.dumps({"url": uploader.url, "began": began, "offset": uploader.offset}))
