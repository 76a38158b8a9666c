"""A careless S3 server for the start-up probe's test (issue 25): it keeps objects in memory
and answers every call a node makes at start, but ignores conditional headers (If-None-Match,
If-Match), as Garage 2.5 does. Prints its port, then serves 127.0.0.1 until killed.

    python3 careless_s3.py
"""
import hashlib
import http.server
import sys

OBJECTS = {}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, code, body=b"", headers=()):
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_HEAD(self):
        path = self.path.split("?")[0]
        if "/" not in path.strip("/") or path in OBJECTS:  # the bucket, or an object
            return self.reply(200)
        self.reply(404)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path in OBJECTS:
            return self.reply(200, OBJECTS[path])
        if "list-type=2" in self.path:
            xml = b'<?xml version="1.0"?><ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>'
            return self.reply(200, xml, [("Content-Type", "application/xml")])
        xml = b"<Error><Code>NoSuchKey</Code><Message>none</Message></Error>"
        self.reply(404, xml, [("Content-Type", "application/xml")])

    def do_PUT(self):
        data = self.body()
        OBJECTS[self.path.split("?")[0]] = data
        etag = '"%s"' % hashlib.md5(data).hexdigest()
        self.reply(200, b"", [("ETag", etag)])

    def do_POST(self):
        self.body()
        self.reply(200, b"<DeleteResult/>", [("Content-Type", "application/xml")])

    def do_DELETE(self):
        OBJECTS.pop(self.path.split("?")[0], None)
        self.reply(204)


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(server.server_address[1], flush=True)
try:
    server.serve_forever()
except KeyboardInterrupt:
    sys.exit(0)
