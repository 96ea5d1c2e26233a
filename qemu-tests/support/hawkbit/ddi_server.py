#!/usr/bin/env python3
"""A DDI server in Eclipse hawkBit's shapes and status codes (README.md).

Prints "port N admin M" once it listens on 127.0.0.1 (DDI on N, with TLS
when asked; the tests' side on M, plain HTTP), then serves until killed.
Tests drive it through /_admin/ on M (no authentication, JSON):

  POST /_admin/distribution {"name", "version", "modules": [{"name",
       "version", "type", "artifacts": [{"path", "filename"?,
       "sha256"?, "links"?: ["download-http", "download"]}]}]} -> {"id"}
  POST /_admin/assign {"distribution", "type": forced|soft|downloadonly,
       "window": null|"available"|"unavailable", "confirm": bool} -> {"id"}
  POST /_admin/action/{id} {"window"?, "cancel"?: true}
  POST /_admin/config {"sleep"?, "cut_after"?: bytes}
  GET  /_admin/state  -> actions, attributes, installed, refused, log
"""

import argparse
import hashlib
import json
import os
import re
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import jsonschema
import referencing
import referencing.jsonschema

# JpaControllerManagement.PATTERN and Target's size limits.
ATTRIBUTE = re.compile(r"""[a-zA-Z0-9_\-!@#$%^&*()+=\[\]{}|;:'",.<>/\\?\s]*""")
MAX_ATTRIBUTE = 128
# HawkbitSecurityProperties.Dos defaults.
MAX_ATTRIBUTES = 100
MAX_MESSAGES = 50
MAX_REQUEST = 1 << 20


class Schemas:
    """The request bodies of hawkBit's OpenAPI description, as JSON Schema."""

    def __init__(self, path):
        with open(path) as f:
            spec = json.load(f)
        self.spec = spec
        resource = referencing.Resource.from_contents(
            spec, default_specification=referencing.jsonschema.DRAFT4
        )
        self.registry = referencing.Registry().with_resource("urn:ddi", resource)

    def body(self, method, template):
        """The schema of the JSON body of `method` on path `template`."""
        op = self.spec["paths"][template][method.lower()]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return {"$ref": "urn:ddi" + ref}

    def problems(self, method, template, body):
        schema = self.body(method, template)
        validator = jsonschema.Draft4Validator(schema, registry=self.registry)
        return [
            f"{'/'.join(str(p) for p in e.absolute_path) or 'body'}: {e.message}"
            for e in validator.iter_errors(body)
        ]


class World:
    """What the server knows: distribution sets, actions, one device."""

    def __init__(self):
        self.lock = threading.RLock()
        self.distributions = []
        self.actions = []
        self.attributes = {}
        self.attributes_asked = True
        self.installed = None
        self.refused = []
        self.log = []
        self.sleep = "00:05:00"
        self.cut_after = None

    def active(self):
        for a in self.actions:
            if a["status"] not in ("finished", "error", "canceled"):
                return a
        return None

    def action(self, ident):
        for a in self.actions:
            if str(a["id"]) == ident:
                return a
        return None

    def state(self):
        return {
            "actions": self.actions,
            "attributes": self.attributes,
            "installed": self.installed,
            "refused": self.refused,
            "log": self.log,
        }


def sha(path, algo):
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class Refusal(Exception):
    def __init__(self, status, code, message):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def handler(world, schemas, tokens, client_ca, admin_only=False):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        # --- replies -------------------------------------------------
        def reply(self, status, body=None, headers=()):
            data = b"" if body is None else json.dumps(body).encode()
            self.send_response(status)
            for k, v in headers:
                self.send_header(k, v)
            if body is not None:
                self.send_header("Content-Type", "application/hal+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
            with world.lock:
                world.log.append({"method": self.command, "path": self.path, "status": status})

        def refuse(self, r):
            with world.lock:
                world.refused.append(
                    {"method": self.command, "path": self.path, "status": r.status, "why": r.message}
                )
            body = {"exceptionClass": "org.eclipse.hawkbit." + r.code, "errorCode": r.code, "message": r.message}
            self.reply(r.status, body)

        # --- requests ------------------------------------------------
        def base_url(self):
            scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
            return f"{scheme}://{self.headers.get('Host')}"

        def authenticate(self):
            if client_ca is not None:
                cert = self.connection.getpeercert() if isinstance(self.connection, ssl.SSLSocket) else None
                if cert:
                    return
            given = self.headers.get("Authorization", "")
            if given and given in tokens:
                return
            raise Refusal(401, "server.error.unauthorized", "the request requires user authentication")

        def body(self, method, template):
            ctype = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_REQUEST:
                raise Refusal(413, "server.error.rest.body.tooLarge", f"{length} bytes")
            raw = self.rfile.read(length)
            self.drained = True
            if ctype != "application/json":
                raise Refusal(415, "server.error.rest.body.mediaType", f"content type {ctype!r}")
            try:
                body = json.loads(raw)
            except ValueError as e:
                raise Refusal(400, "server.error.rest.body.notReadable", f"not JSON: {e}")
            problems = schemas.problems(method, template, body)
            if problems:
                raise Refusal(400, "server.error.rest.body.notReadable", "; ".join(problems))
            return body

        def do_GET(self):
            self.route("GET")

        def do_POST(self):
            self.route("POST")

        def do_PUT(self):
            self.route("PUT")

        def route(self, method):
            # One handler serves every request of a kept-alive connection.
            self.drained = False
            path = urlsplit(self.path).path
            try:
                if admin_only:
                    return self.admin(method, path)
                m = re.fullmatch(r"/([^/]+)/controller/v1/([^/]+)(/.*)?", path)
                if not m:
                    raise Refusal(404, "server.error.repo.entitiyNotFound", "no such resource")
                self.authenticate()
                tenant, controller, rest = m.group(1), m.group(2), m.group(3) or ""
                self.root = f"{self.base_url()}/{tenant}/controller/v1/{controller}"
                self.ddi(method, rest)
            except Refusal as r:
                # A refused request's body is drained so that the
                # connection can carry the next one.
                if method != "GET" and not getattr(self, "drained", False):
                    self.rfile.read(int(self.headers.get("Content-Length") or 0))
                self.refuse(r)

        # --- DDI -----------------------------------------------------
        def ddi(self, method, rest):
            T = "/{tenant}/controller/v1/{controllerId}"
            if rest == "" and method == "GET":
                return self.poll()
            if rest == "/configData" and method == "PUT":
                body = self.body("PUT", T + "/configData")
                return self.config_data(body)
            if rest == "/installedBase" and method == "PUT":
                body = self.body("PUT", T + "/installedBase")
                return self.installed_base(body)
            m = re.fullmatch(r"/(deploymentBase|confirmationBase|cancelAction)/([^/]+)(/feedback)?", rest)
            if m:
                kind, ident, feedback = m.groups()
                if feedback and method == "POST":
                    body = self.body("POST", f"{T}/{kind}/{{actionId}}/feedback")
                    return self.feedback(kind, ident, body)
                if not feedback and method == "GET":
                    return self.resource(kind, ident)
            m = re.fullmatch(r"/softwaremodules/([^/]+)/artifacts/([^/]+)", rest)
            if m and method == "GET":
                return self.artifact(m.group(1), m.group(2))
            raise Refusal(405 if rest else 404, "server.error.rest.methodNotAllowed", f"{method} {rest}")

        def poll(self):
            with world.lock:
                links = {}
                a = world.active()
                if a is not None:
                    href = f"{self.root}/%s/{a['id']}"
                    if a.get("cancel"):
                        links["cancelAction"] = {"href": href % "cancelAction"}
                    elif a["confirm"] and not a["confirmed"]:
                        links["confirmationBase"] = {"href": href % "confirmationBase"}
                    else:
                        links["deploymentBase"] = {"href": (href % "deploymentBase") + f"?c=-{a['polls']}"}
                if world.attributes_asked:
                    links["configData"] = {"href": f"{self.root}/configData"}
                done = [x for x in world.actions if x["status"] == "finished"]
                if done:
                    links["installedBase"] = {"href": f"{self.root}/installedBase/{done[-1]['id']}"}
                body = {"config": {"polling": {"sleep": world.sleep}}, "_links": links}
            tag = '"' + hashlib.sha1(json.dumps(body, sort_keys=True).encode()).hexdigest() + '"'
            if self.headers.get("If-None-Match") == tag:
                return self.reply(304, None, [("ETag", tag)])
            self.reply(200, body, [("ETag", tag)])

        def config_data(self, body):
            data = body["data"]
            for k, v in data.items():
                for what, text in (("key", k), ("value", v)):
                    if len(text) > MAX_ATTRIBUTE or not ATTRIBUTE.fullmatch(text):
                        raise Refusal(400, "server.error.repo.invalidTargetAttributes", f"attribute {what} {text!r}")
            with world.lock:
                mode = body.get("mode", "merge")
                if mode == "replace":
                    world.attributes = dict(data)
                elif mode == "remove":
                    for k in data:
                        world.attributes.pop(k, None)
                else:
                    world.attributes.update(data)
                if len(world.attributes) > MAX_ATTRIBUTES:
                    raise Refusal(403, "server.error.quota.tooManyEntries", "too many attributes")
                world.attributes_asked = False
            self.reply(200)

        def installed_base(self, body):
            with world.lock:
                ds = next(
                    (d for d in world.distributions if d["name"] == body["name"] and d["version"] == body["version"]),
                    None,
                )
                if ds is None:
                    raise Refusal(404, "server.error.repo.entitiyNotFound", f"distribution set {body['name']} {body['version']}")
                world.installed = {"name": ds["name"], "version": ds["version"]}
                world.actions.append(
                    {"id": len(world.actions) + 1, "distribution": ds["id"], "type": "forced", "status": "finished",
                     "offline": True, "confirm": False, "confirmed": True, "window": None, "polls": 0,
                     "feedback": [], "confirmations": []}
                )
            self.reply(200)

        def chunks(self, ds):
            out = []
            for m in ds["modules"]:
                artifacts = []
                for art in m["artifacts"]:
                    url = f"{self.root}/softwaremodules/{m['id']}/artifacts/{art['filename']}"
                    links = {}
                    for rel in art.get("links", ["download-http"]):
                        links[rel] = {"href": url.replace("http://", "https://", 1) if rel == "download" else url}
                        links[rel.replace("download", "md5sum")] = {"href": url + ".MD5SUM"}
                    artifacts.append({
                        "filename": art["filename"],
                        "hashes": {"sha1": art["sha1"], "md5": art["md5"], "sha256": art.get("sha256_told", art["sha256"])},
                        "size": art["size"],
                        "_links": links,
                    })
                out.append({"part": m["type"], "version": m["version"], "name": m["name"], "artifacts": artifacts})
            return out

        def resource(self, kind, ident):
            with world.lock:
                a = world.action(ident)
                if a is None:
                    raise Refusal(404, "server.error.repo.entitiyNotFound", f"action {ident}")
                ds = world.distributions[a["distribution"] - 1]
                if kind == "cancelAction":
                    if not a.get("cancel"):
                        raise Refusal(404, "server.error.repo.entitiyNotFound", f"no cancel for action {ident}")
                    return self.reply(200, {"id": str(a["id"]), "cancelAction": {"stopId": str(a["id"])}})
                download = "forced" if a["type"] in ("forced", "downloadonly") else "attempt"
                if a["type"] == "downloadonly":
                    update = "skip"
                elif a["window"] is not None:
                    update = download if a["window"] == "available" else "skip"
                else:
                    update = download
                part = {"download": download, "update": update, "chunks": self.chunks(ds)}
                if a["window"] is not None:
                    part["maintenanceWindow"] = a["window"]
                history = {"status": a["status"].upper(), "messages": []}
                if kind == "confirmationBase":
                    if not (a["confirm"] and not a["confirmed"]):
                        raise Refusal(404, "server.error.repo.entitiyNotFound", f"action {ident} awaits no confirmation")
                    return self.reply(200, {"id": str(a["id"]), "confirmation": part, "actionHistory": history})
                if a["confirm"] and not a["confirmed"]:
                    raise Refusal(404, "server.error.repo.entitiyNotFound", f"action {ident} awaits confirmation")
                a["polls"] += 1
                self.reply(200, {"id": str(a["id"]), "deployment": part, "actionHistory": history})

        def feedback(self, kind, ident, body):
            with world.lock:
                a = world.action(ident)
                if a is None:
                    raise Refusal(404, "server.error.repo.entitiyNotFound", f"action {ident}")
                if kind == "confirmationBase":
                    if not (a["confirm"] and not a["confirmed"]):
                        raise Refusal(410, "server.error.action.notActive", f"action {ident} awaits no confirmation")
                    a["confirmations"].append(body)
                    if body["confirmation"] == "confirmed":
                        a["confirmed"] = True
                    return self.reply(200)
                if a["status"] in ("finished", "error", "canceled"):
                    raise Refusal(410, "server.error.action.notActive", f"action {ident} is {a['status']}")
                if len(body["status"].get("details") or []) > MAX_MESSAGES:
                    raise Refusal(403, "server.error.quota.tooManyEntries", "too many messages")
                a["feedback"].append(body)
                execution = body["status"]["execution"]
                finished = body["status"]["result"]["finished"]
                if kind == "cancelAction":
                    if execution == "closed" and finished == "success":
                        a["status"] = "canceled"
                    elif execution in ("rejected", "closed"):
                        a["cancel"] = False
                elif execution == "closed":
                    a["status"] = "finished" if finished == "success" else "error"
                    if finished == "success":
                        ds = world.distributions[a["distribution"] - 1]
                        world.installed = {"name": ds["name"], "version": ds["version"]}
                        world.attributes_asked = True
                elif execution == "downloaded":
                    a["status"] = "finished" if a["type"] == "downloadonly" else "downloaded"
                elif execution == "canceled":
                    a["status"] = "canceled"
                else:
                    a["status"] = "running"
            self.reply(200)

        def artifact(self, module, name):
            with world.lock:
                art = next(
                    (x for d in world.distributions for m in d["modules"] if str(m["id"]) == module
                     for x in m["artifacts"] if x["filename"] == name),
                    None,
                )
                cut, world.cut_after = world.cut_after, None
            if art is None:
                raise Refusal(404, "server.error.repo.entitiyNotFound", f"artifact {module}/{name}")
            size = art["size"]
            start, end, status = 0, size - 1, 200
            asked = self.headers.get("Range")
            if asked:
                m = re.fullmatch(r"bytes=(\d+)-(\d*)", asked.strip())
                if not m or int(m.group(1)) >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    with world.lock:
                        world.log.append({"method": "GET", "path": self.path, "status": 416})
                    return
                start = int(m.group(1))
                end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
                status = 206
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{art["sha1"]}"')
            self.send_header("Content-Length", str(end - start + 1))
            if status == 206:
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            self.end_headers()
            with world.lock:
                world.log.append({"method": "GET", "path": self.path, "status": status, "range": asked})
            left = end - start + 1
            if cut is not None:
                left = min(left, cut)
            with open(art["path"], "rb") as f:
                f.seek(start)
                while left > 0:
                    block = f.read(min(left, 1 << 16))
                    if not block:
                        break
                    self.wfile.write(block)
                    left -= len(block)
            if cut is not None:
                self.close_connection = True
                self.connection.shutdown(2)

        # --- the tests' side -----------------------------------------
        def admin(self, method, path):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            self.drained = True
            with world.lock:
                if method == "GET" and path == "/_admin/state":
                    return self.reply(200, world.state())
                if method == "POST" and path == "/_admin/distribution":
                    ds = {"id": len(world.distributions) + 1, "name": body["name"], "version": body["version"], "modules": []}
                    for i, m in enumerate(body["modules"]):
                        module = {"id": ds["id"] * 100 + i, "name": m["name"], "version": m["version"],
                                  "type": m.get("type", "os"), "artifacts": []}
                        for art in m["artifacts"]:
                            p = art["path"]
                            module["artifacts"].append({
                                "path": p, "filename": art.get("filename", os.path.basename(p)),
                                "size": os.path.getsize(p), "sha1": sha(p, "sha1"), "md5": sha(p, "md5"),
                                "sha256": sha(p, "sha256"), "links": art.get("links", ["download-http"]),
                                **({"sha256_told": art["sha256"]} if "sha256" in art else {}),
                            })
                        ds["modules"].append(module)
                    world.distributions.append(ds)
                    return self.reply(200, {"id": ds["id"]})
                if method == "POST" and path == "/_admin/assign":
                    # One action at a time, as hawkBit without
                    # multi-assignments: a new one cancels the open one.
                    old = world.active()
                    if old is not None:
                        old["status"] = "canceled"
                    a = {"id": len(world.actions) + 1, "distribution": body["distribution"],
                         "type": body.get("type", "forced"), "window": body.get("window"),
                         "confirm": bool(body.get("confirm")), "confirmed": False, "status": "scheduled",
                         "polls": 0, "feedback": [], "confirmations": []}
                    world.actions.append(a)
                    return self.reply(200, {"id": a["id"]})
                m = re.fullmatch(r"/_admin/action/(\d+)", path)
                if method == "POST" and m:
                    a = world.action(m.group(1))
                    if "window" in body:
                        a["window"] = body["window"]
                    if body.get("cancel"):
                        a["cancel"] = True
                    return self.reply(200, {})
                if method == "POST" and path == "/_admin/config":
                    world.sleep = body.get("sleep", world.sleep)
                    world.cut_after = body.get("cut_after", world.cut_after)
                    return self.reply(200, {})
            raise Refusal(404, "admin", f"{method} {path}")

    return Handler


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--spec", required=True)
    p.add_argument("--target-token", action="append", default=[])
    p.add_argument("--gateway-token", action="append", default=[])
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--client-ca")
    args = p.parse_args()
    tokens = {f"TargetToken {t}" for t in args.target_token} | {f"GatewayToken {t}" for t in args.gateway_token}
    world = World()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler(world, Schemas(args.spec), tokens, args.client_ca))
    server.daemon_threads = True
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    admin = ThreadingHTTPServer(("127.0.0.1", 0), handler(world, None, tokens, None, admin_only=True))
    admin.daemon_threads = True
    threading.Thread(target=admin.serve_forever, daemon=True).start()
    print(f"port {server.server_address[1]} admin {admin.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
