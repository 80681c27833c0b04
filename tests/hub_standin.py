"""A loopback stand-in for the part of the Hugging Face Hub HTTP API that an upload without Xet uses.

`huggingface_hub` (2.x) uploads a folder in these requests, all of which this server answers and records:

1. `POST /api/repos/create` (Trainer(push_to_hub=True) creates the repo when it is built);
2. `POST /api/validate-yaml` (the README.md metadata is checked before anything is hashed);
3. `POST /api/models/{repo}/preupload/{revision}`: the server says, per file, "regular" (sent inline in the commit)
   or "lfs" (sent to large-file storage first);
4. for "lfs" files, the Git LFS batch API `POST /{repo}.git/info/lfs/objects/batch`, then one `PUT` of the bytes to
   the URL it returned and a `POST` to its verify URL;
5. `POST /api/models/{repo}/commit/{revision}`: an NDJSON body of a header line, inline files (base64) and LFS
   pointers (sha256 + size), which this server resolves against the uploaded LFS objects.

With `hf_xet` installed, `huggingface_hub` sends large files through the Xet protocol (a content-addressed store
reached with a token from the Hub) and never asks for the LFS batch API; there is no fallback decided by the
server. `HF_HUB_DISABLE_XET=1` (the constant `huggingface_hub.constants.HF_HUB_DISABLE_XET`) selects the LFS path.
The Xet protocol is not implemented here.

`huggingface_hub` also asks, at most once a process and without a token, for `GET /api/agent-harnesses` (a
telemetry registry, best effort). It is answered 404, so nothing is cached under `HF_HOME`, and recorded in
`ignored`, not in `unexpected`.

Every other request must carry `Authorization: Bearer <token>` (else 401); unknown routes get 404. Both are recorded
in `unexpected`, so a test sees calls it did not plan for.
"""

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# Suffixes the Hub's default .gitattributes stores in LFS; binary samples and files over 10 MB go to LFS too.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack", ".onnx", ".pkl", ".npy", ".npz")
REGULAR_MAX_BYTES = 10 * 1024 * 1024

IGNORED_PATHS = ("/api/agent-harnesses",)
REPO = r"(?P<repo>[\w.-]+/[\w.-]+)"
ROUTES = (
    ("POST", re.compile(r"/api/repos/create"), "create_repo"),
    ("GET", re.compile(r"/api/whoami-v2"), "whoami"),
    ("POST", re.compile(r"/api/validate-yaml"), "validate_yaml"),
    ("POST", re.compile(rf"/api/models/{REPO}/preupload/(?P<revision>[^/]+)"), "preupload"),
    ("POST", re.compile(rf"/{REPO}\.git/info/lfs/objects/batch"), "lfs_batch"),
    ("PUT", re.compile(r"/lfs-upload/(?P<oid>[0-9a-f]{64})"), "lfs_upload"),
    ("POST", re.compile(r"/lfs-verify"), "lfs_verify"),
    ("POST", re.compile(rf"/api/models/{REPO}/commit/(?P<revision>[^/]+)"), "commit"),
)


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    files: dict[str, bytes]
    lfs_paths: set[str]


@dataclass
class HubState:
    token: str
    repos: dict[str, dict] = field(default_factory=dict)
    lfs_objects: dict[str, bytes] = field(default_factory=dict)
    commits: list[Commit] = field(default_factory=list)
    validated_readmes: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


class HubStandIn:
    """Run with `with HubStandIn(token) as hub:`; `hub.endpoint` is the base URL to give `huggingface_hub`."""

    def __init__(self, token: str):
        self.state = HubState(token=token)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_class(self.state))
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, name="hub-standin", daemon=True)

    def __enter__(self) -> "HubStandIn":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def repo_files(self, repo_id: str) -> dict[str, bytes]:
        """The repository's files after all commits so far."""
        files: dict[str, bytes] = {}
        for commit in self.state.commits:
            if commit.repo_id == repo_id:
                files.update(commit.files)
        return files


def _handler_class(state: HubState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):
            pass  # keep test output clean

        def do_GET(self):
            self._dispatch("GET")

        def do_POST(self):
            self._dispatch("POST")

        def do_PUT(self):
            self._dispatch("PUT")

        # -- plumbing ----------------------------------------------------------------------------------------------
        def _dispatch(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            body = self._read_body()
            if path in IGNORED_PATHS:
                state.ignored.append(f"{method} {path}")
                self._reply(404, {"error": "not served by the stand-in"})
                return
            if self.headers.get("authorization") != f"Bearer {state.token}" and not path.startswith("/lfs-upload/"):
                state.unexpected.append(f"{method} {path} (no or wrong token)")
                self._reply(401, {"error": "Invalid credentials"})
                return
            for route_method, pattern, name in ROUTES:
                match = pattern.fullmatch(path)
                if match and route_method == method:
                    state.calls.append(name)
                    status, payload = getattr(self, name)(body, **match.groupdict())
                    self._reply(status, payload)
                    return
            state.unexpected.append(f"{method} {path}")
            self._reply(404, {"error": f"stand-in has no route for {method} {path}"})

        def _read_body(self) -> bytes:
            if self.headers.get("transfer-encoding", "").lower() == "chunked":
                chunks = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        self.rfile.readline()
                        return b"".join(chunks)
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("content-length") or 0))

        def _reply(self, status: int, payload: object) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _base(self) -> str:
            return f"http://{self.headers['host']}"

        # -- endpoints ---------------------------------------------------------------------------------------------
        def whoami(self, body: bytes) -> tuple[int, dict]:
            return 200, {"type": "user", "name": "tester", "orgs": []}

        def create_repo(self, body: bytes) -> tuple[int, dict]:
            request = json.loads(body)
            repo_id = f"{request.get('organization') or 'tester'}/{request['name']}"
            if repo_id in state.repos:
                return 409, {"error": "You already created this model repo", "url": f"{self._base()}/{repo_id}"}
            state.repos[repo_id] = request
            return 200, {"url": f"{self._base()}/{repo_id}", "name": repo_id}

        def validate_yaml(self, body: bytes) -> tuple[int, dict]:
            state.validated_readmes.append(json.loads(body)["content"])
            return 200, {"errors": [], "warnings": []}

        def preupload(self, body: bytes, repo: str, revision: str) -> tuple[int, dict]:
            if repo not in state.repos:
                return 404, {"error": f"Repository {repo} not found"}
            files = []
            for file in json.loads(body)["files"]:
                sample = base64.b64decode(file["sample"])
                lfs = file["path"].endswith(LFS_SUFFIXES) or file["size"] > REGULAR_MAX_BYTES or not _is_text(sample)
                files.append({"path": file["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
            return 200, {"files": files}

        def lfs_batch(self, body: bytes, repo: str) -> tuple[int, dict]:
            request = json.loads(body)
            objects = [
                {
                    "oid": item["oid"],
                    "size": item["size"],
                    "authenticated": True,
                    "actions": {
                        "upload": {"href": f"{self._base()}/lfs-upload/{item['oid']}"},
                        "verify": {"href": f"{self._base()}/lfs-verify"},
                    },
                }
                for item in request["objects"]
            ]
            return 200, {"transfer": "basic", "objects": objects}

        def lfs_upload(self, body: bytes, oid: str) -> tuple[int, dict]:
            if hashlib.sha256(body).hexdigest() != oid:
                return 400, {"error": "uploaded bytes do not match the announced sha256"}
            state.lfs_objects[oid] = body
            return 200, {}

        def lfs_verify(self, body: bytes) -> tuple[int, dict]:
            request = json.loads(body)
            stored = state.lfs_objects.get(request["oid"])
            if stored is None or len(stored) != request["size"]:
                return 404, {"error": "object not uploaded"}
            return 200, {}

        def commit(self, body: bytes, repo: str, revision: str) -> tuple[int, dict]:
            if repo not in state.repos:
                return 404, {"error": f"Repository {repo} not found"}
            lines = [json.loads(line) for line in body.splitlines() if line.strip()]
            header = lines[0]
            if header["key"] != "header":
                return 400, {"error": "the first NDJSON line must be the header"}
            files, lfs_paths = {}, set()
            for line in lines[1:]:
                value = line["value"]
                if line["key"] == "file":
                    files[value["path"]] = base64.b64decode(value["content"])
                elif line["key"] == "lfsFile":
                    stored = state.lfs_objects.get(value["oid"])
                    if stored is None or len(stored) != value["size"]:
                        return 422, {"error": f"LFS object of {value['path']} was never uploaded"}
                    files[value["path"]] = stored
                    lfs_paths.add(value["path"])
                else:
                    return 400, {"error": f"stand-in does not handle commit operation {line['key']!r}"}
            state.commits.append(Commit(repo, revision, header["value"]["summary"], files, lfs_paths))
            oid = hashlib.sha1(body).hexdigest()
            return 200, {"commitUrl": f"{self._base()}/{repo}/commit/{oid}", "commitOid": oid}

    return Handler


def _is_text(sample: bytes) -> bool:
    """Whether a file's first bytes look like text (the sample may end inside a multi-byte character)."""
    try:
        sample.decode("utf-8")
    except UnicodeDecodeError as error:
        if error.start < len(sample) - 3:
            return False
    return b"\x00" not in sample
