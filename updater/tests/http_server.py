#!/usr/bin/env python3
"""A small HTTP file server for the updater's download tests, on 127.0.0.1.

Serves one file with byte-range support (206 + Content-Range). Faults on
request: --drop-after N closes the connection after N body bytes, for the
first --drops responses; --ignore-range answers every request with 200 and
the whole file; --stall-after N sends N body bytes and then nothing, for
the first --drops responses; --silent accepts and never answers; --etag V
sends an ETag and honours If-Range, and --changed-etag W makes every
response after the first carry W instead (the file was replaced); --tls
CERT KEY serves HTTPS. Prints the port, then serves until killed.
Every request is logged to stderr as: RANGE <header or ->  STATUS <code>."""
import argparse, http.server, os, socketserver, ssl, sys, time

p = argparse.ArgumentParser()
p.add_argument("file")
p.add_argument("--drop-after", type=int, default=0)
p.add_argument("--drops", type=int, default=1)
p.add_argument("--ignore-range", action="store_true")
p.add_argument("--stall-after", type=int, default=0)
p.add_argument("--silent", action="store_true")
p.add_argument("--etag")
p.add_argument("--changed-etag")
p.add_argument("--tls", nargs=2)
args = p.parse_args()
data = open(args.file, "rb").read()
state = {"drops": args.drops, "served": 0}


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *a):
        pass

    def do_GET(self):
        if args.silent:
            time.sleep(3600)
            return
        etag = args.etag
        if etag and args.changed_etag and state["served"] > 0:
            etag = args.changed_etag
        state["served"] += 1
        rng = self.headers.get("Range")
        if rng and etag and self.headers.get("If-Range") not in (None, etag):
            rng = None  # RFC 9110: a stale validator gets the whole, new file
        start = 0
        if rng and not args.ignore_range:
            start = int(rng.split("=")[1].split("-")[0])
            body = data[start:]
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            body = data
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "application/octet-stream")
        if etag:
            self.send_header("ETag", etag)
        self.end_headers()
        status = 206 if (rng and not args.ignore_range) else 200
        sys.stderr.write(f"RANGE {rng or '-'} STATUS {status}\n")
        sys.stderr.flush()
        if args.stall_after and state["drops"] > 0:
            state["drops"] -= 1
            self.wfile.write(body[: args.stall_after])
            self.wfile.flush()
            time.sleep(3600)
            return
        if args.drop_after and state["drops"] > 0:
            state["drops"] -= 1
            self.wfile.write(body[: args.drop_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


srv = Server(("127.0.0.1", 0), Handler)
if args.tls:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls[0], args.tls[1])
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
