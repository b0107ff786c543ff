"""A fake of the Kaggle API the kit's flows use, for the real `kaggle` CLI (2.x, kagglesdk) to talk to.

The CLI speaks RPC over HTTP: `POST <endpoint>/api/v1/<package>.<Service>/<Method>` with a JSON body of the
request's camelCase fields (kagglesdk/kaggle_http_client.py `_get_request_url`), answered with JSON of the
response's fields; an error is an HTTP status >= 400 (a JSON `{"code", "message"}` body is raised by the
SDK as `HTTPError(message)`). Files go around the RPC: an upload is a PUT of the bytes to the `createUrl`
that StartSubmissionUpload / StartBlobUpload returned, and a download follows the redirect of
DownloadDataFiles.

Where the requests come in: kaggle 2.2.5 builds its client with an explicit environment (PROD, or LOCAL
when KAGGLE_API_ENVIRONMENT=LOCALHOST, i.e. http://localhost on port 80); KAGGLE_API_ENVIRONMENT=TEST
(localhost:7777) is only read by kagglesdk's own default and never reaches the CLI. So the fake listens
on an ephemeral loopback port and is named as the HTTP proxy of http://localhost (requests honours
HTTP_PROXY): no fixed port, no root, several test runs at once. The server is bounded: it answers only
on 127.0.0.1, records every request, and stops when the fixture ends.

Authentication, as kaggle 2.x does it (kaggle_api_extended.py `authenticate`, kagglesdk kaggle_creds.py):
a legacy key (kaggle.json or KAGGLE_USERNAME/KAGGLE_KEY) is sent as HTTP Basic auth; an API token
(KAGGLE_API_TOKEN, ~/.kaggle/access_token) is first introspected (IntrospectToken names its user), then
sent as a Bearer token; `kaggle auth login` exchanges a code for an access and a refresh token
(ExchangeOAuthToken), keeps them in ~/.kaggle/credentials.json and renews the access token when it expires
(GenerateAccessToken). Any other call without a known key or token is answered 401.

Faults on demand, for the polls: `fail(method, *codes)` answers the next calls of an RPC method with
those HTTP statuses (a 429 carries `Retry-After: 0`, so the CLI's own retries do not sleep), and
`new_invisible` hides a new dataset, notebook version or submission for that many reads (404, or absent
from the list), as Kaggle does for a while after creating one.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

USER, KEY = "tester", "fake-key-0123456789"
API_TOKEN = "KGAT_fake-api-token-0123456789"  # what kaggle.com's "Generate New Token" gives
OAUTH_CODE = "fake-oauth-code"  # the verification code `kaggle auth login --no-launch-browser` asks for
RPC = "/api/v1/"
NO_AUTH = ("IntrospectToken", "ExchangeOAuthToken", "GenerateAccessToken")  # the login's own calls


@dataclass
class Competition:
    files: dict[str, bytes] = field(default_factory=dict)  # the download: name -> bytes (zipped on the way)
    code: bool = False  # a code competition: CSV uploads are refused with 400
    rules_accepted: bool = True  # False: 403 on download and submit
    left_today: int = 5  # submissions left today; 0: 429
    outcome: tuple[str, str, str] = ("COMPLETE", "0.812345", "")  # status, public score, error of a new one
    polls: int = 1  # status reads a new submission stays PENDING


class FakeKaggle:
    """The server and its state; `requests` lists (method, path, json body) of every call received."""

    def __init__(self):
        self.competitions: dict[str, Competition] = {}
        self.submissions: list[dict] = []
        self.datasets: dict[str, dict] = {}  # owner/slug -> {"versions": [ {name: bytes} ... ]}
        self.kernels: dict[str, dict] = {}  # owner/slug -> {"versions": [request json], "polls": n}
        self.kernel_polls = 1  # status reads a pushed kernel stays RUNNING
        self.kernel_outcome: tuple[str, str] = ("COMPLETE", "")
        # run_kernel(save_request, fake) -> (status, failure message): runs a pushed kernel (in a thread);
        # None: a kernel stays RUNNING for `kernel_polls` reads, then ends as `kernel_outcome`
        self.run_kernel = None
        self.blobs: dict[str, bytes] = {}
        self.uploads: dict[str, str] = {}  # upload path -> blob token
        self.blob_names: dict[str, str] = {}  # blob token -> the file name it was started with
        self.requests: list[tuple[str, str, dict]] = []
        self.tokens = {API_TOKEN}  # access tokens accepted as Bearer auth
        self.refresh_tokens: set[str] = set()
        self.faults: dict[str, list[tuple[str | None, int]]] = {}  # RPC method -> (after, HTTP status) to answer
        self.new_invisible = 0  # reads a new dataset, notebook version or submission stays invisible
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                fake._serve(self, "POST")

            def do_PUT(self):
                fake._serve(self, "PUT")

            def do_GET(self):
                fake._serve(self, "GET")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeKaggle:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def env(self, home: Path, key: bool = True) -> dict[str, str]:
        """The environment that points the real CLI at this fake, with a clean home, and (with `key`) the
        legacy key in KAGGLE_USERNAME/KAGGLE_KEY and ~/.kaggle as KAGGLE_CONFIG_DIR."""
        proxy = f"http://127.0.0.1:{self.port}"
        env = {"KAGGLE_API_ENVIRONMENT": "LOCALHOST", "HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "",
               "no_proxy": "", "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config")}
        home.mkdir(parents=True, exist_ok=True)
        if key:
            (home / ".kaggle").mkdir(parents=True, exist_ok=True)
            env.update(KAGGLE_USERNAME=USER, KAGGLE_KEY=KEY, KAGGLE_CONFIG_DIR=str(home / ".kaggle"))
        return env

    def fail(self, method: str, *codes: int, after: str | None = None) -> None:
        """Answer the next calls of the RPC `method` (e.g. "GetDatasetStatus") with these HTTP statuses;
        with `after`, only the calls once the RPC `after` (e.g. "CreateDataset") has been called."""
        self.faults.setdefault(method, []).extend((after, code) for code in codes)

    def reset(self) -> None:
        """No datasets, notebooks or submissions, no pending faults, nothing hidden, the request log cleared."""
        self.datasets.clear()
        self.kernels.clear()
        self.submissions.clear()
        self.faults.clear()
        self.new_invisible = 0
        self.requests.clear()

    def calls(self, method: str) -> list[dict]:
        """The JSON bodies of every call of the RPC `method` (e.g. "CreateSubmission")."""
        return [body for _, path, body in self.requests if path.endswith("/" + method)]

    # ---- plumbing
    def _serve(self, h: BaseHTTPRequestHandler, verb: str) -> None:
        path = urlsplit(h.path).path  # through a proxy the request line holds the absolute URL
        data = h.rfile.read(int(h.headers.get("Content-Length") or 0))
        body = json.loads(data) if verb == "POST" and data else {}
        with self.lock:
            self.requests.append((verb, path, body))
            if verb == "PUT" and path in self.uploads:  # a signed upload URL: no credentials, as on GCS
                self.blobs[self.uploads[path]] = data
                return self._json(h, 200, {})
            if verb == "GET" and path.startswith("/files/"):
                return self._bytes(h, self._zip_of(path.rsplit("/", 1)[1].removesuffix(".zip")))
            if verb == "POST" and path.startswith(RPC):
                method = path.rsplit("/", 1)[1]
                auth = h.headers.get("Authorization", "")
                known = (auth == "Basic " + base64.b64encode(f"{USER}:{KEY}".encode()).decode()
                         or auth.removeprefix("Bearer ") in self.tokens)
                if not known and method not in NO_AUTH:
                    return self._json(h, 401, {"code": 401, "message": "Unauthenticated"})
                pending = self.faults.get(method)
                if pending and (pending[0][0] is None or self.calls(pending[0][0])):
                    return self._fault(h, pending.pop(0)[1])
                handler = getattr(self, "_" + method, None)
                if handler is not None:
                    return handler(h, body)
            return self._json(h, 404, {"code": 404, "message": f"fake Kaggle has no {verb} {path}"})

    def _fault(self, h, code: int) -> None:
        reason = {400: "Bad Request", 403: "You must accept this competition's rules", 404: "Not found yet",
                  429: "Too many requests", 500: "Internal error", 503: "Service unavailable"}.get(code, "fault")
        self._json(h, code, {"code": code, "message": f"{reason} (fake fault)"},
                   {"Retry-After": "0"} if code == 429 else {})

    @staticmethod
    def _json(h, code: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        h.send_response(code)
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    @staticmethod
    def _bytes(h, data: bytes) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/zip")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def _zip_of(self, slug: str) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for name, data in self.competitions[slug].files.items():
                z.writestr(name, data)
        return buf.getvalue()

    def _competition(self, h, name: str, action: str) -> Competition | None:
        comp = self.competitions.get(name)
        if comp is None:
            self._json(h, 404, {"code": 404, "message": f"Competition {name!r} not found"})
        elif not comp.rules_accepted:
            self._json(h, 403, {"code": 403, "message": f"You must accept this competition's rules before {action}"})
            return None
        return comp

    def _new_upload(self, kind: str, name: str = "") -> dict:
        token = f"{kind}-token-{len(self.uploads) + 1}"
        path = f"/upload/{token}"
        self.uploads[path], self.blob_names[token] = token, name
        return {"token": token, "createUrl": f"http://localhost{path}"}

    # ---- competitions.CompetitionApiService
    def _DownloadDataFiles(self, h, body):
        name = body.get("competitionName", "")
        if self._competition(h, name, "downloading its data"):
            h.send_response(302)
            h.send_header("Location", f"http://localhost/files/{name}.zip")
            h.send_header("Content-Length", "0")
            h.end_headers()

    def _StartSubmissionUpload(self, h, body):
        if self._competition(h, body.get("competitionName", ""), "submitting"):
            self._json(h, 200, self._new_upload("submission"))

    def _create(self, h, comp: Competition, name: str, entry: dict) -> None:
        if comp.left_today <= 0:
            return self._json(h, 429, {"code": 429, "message": "Your team has used its daily Submission allowance"})
        comp.left_today -= 1
        ref = 50_000_000 + len(self.submissions) + 1
        self.submissions.append({"ref": ref, "competition": name, "status": "PENDING", "reads": 0,
                                 "hidden": self.new_invisible, "date": "2026-11-29T20:00:00Z", **entry})
        self._json(h, 200, {"message": "Successfully submitted to " + name, "ref": ref})

    def _CreateSubmission(self, h, body):
        name = body.get("competitionName", "")
        comp = self._competition(h, name, "submitting")
        if comp is None:
            return
        if comp.code:
            return self._json(h, 400, {"code": 400, "message": "Submission not allowed: this competition only "
                                                               "accepts submissions from notebooks"})
        blob = self.blobs.get(body.get("blobFileTokens", ""))
        if blob is None:
            return self._json(h, 400, {"code": 400, "message": "no uploaded file for this token"})
        self._create(h, comp, name, {"description": body.get("submissionDescription", ""), "fileName": "upload.csv",
                                     "content": blob})

    def _CreateCodeSubmission(self, h, body):
        name = body.get("competitionName", "")
        comp = self._competition(h, name, "submitting")
        if comp is None:
            return
        kernel = f"{body.get('kernelOwner', USER)}/{body.get('kernelSlug', '')}"
        k = self.kernels.get(kernel)
        version = body.get("kernelVersion")
        if k is None or not version or version > len(k["versions"]):
            return self._json(h, 404, {"code": 404, "message": f"no version {version} of notebook {kernel}"})
        self._create(h, comp, name, {"description": body.get("submissionDescription", ""),
                                     "fileName": body.get("fileName", ""), "kernel": kernel, "version": version})

    def _view(self, s: dict) -> dict:
        """A submission as the API shows it, moving PENDING -> its outcome after `polls` reads."""
        comp = self.competitions[s["competition"]]
        if s["status"] == "PENDING":
            s["reads"] += 1
            if s["reads"] > comp.polls:
                s["status"], s["publicScore"], s["errorDescription"] = comp.outcome
        out = {k: s[k] for k in ("ref", "date", "description", "fileName", "status") if k in s}
        if s["status"] == "COMPLETE":
            out["publicScore"] = s["publicScore"]
        if s["status"] == "ERROR":
            out["errorDescription"] = s["errorDescription"]
        return out

    def _ListSubmissions(self, h, body):
        name = body.get("competitionName", "")
        if self._competition(h, name, "listing submissions"):
            mine = [self._view(s) for s in reversed(self.submissions) if s["competition"] == name
                    and not self._hidden(s)]
            self._json(h, 200, {"submissions": mine})

    @staticmethod
    def _hidden(thing: dict) -> bool:
        """Whether a new `thing` is still invisible to this read (and one read fewer from now on)."""
        if thing.get("hidden", 0) > 0:
            thing["hidden"] -= 1
            return True
        return False

    def _GetSubmission(self, h, body):
        found = [s for s in self.submissions if s["ref"] == int(body.get("ref", 0)) and not self._hidden(s)]
        if not found:
            return self._json(h, 404, {"code": 404, "message": "submission not found"})
        self._json(h, 200, self._view(found[0]))

    def _GetSubmissionLimits(self, h, body):
        comp = self.competitions.get(body.get("competitionName", ""))
        self._json(h, 200, {"numAllowedNow": comp.left_today if comp else 0})

    # ---- blobs.BlobApiService, datasets.DatasetApiService
    def dataset_files(self, ref: str, version: int = -1) -> dict[str, bytes]:
        """The files of a dataset version as uploaded (folders as <name>.zip, as `--dir-mode zip` sends them)."""
        return self.datasets[ref]["versions"][version]

    def _StartBlobUpload(self, h, body):
        self._json(h, 200, self._new_upload("blob", body.get("name", "")))

    def _GetDatasetStatus(self, h, body):
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets or self._hidden(self.datasets[ref]):
            return self._json(h, 404, {"code": 404, "message": f"dataset {ref} not found"})
        self._json(h, 200, {"status": "READY"})

    def _files(self, body: dict) -> dict[str, bytes]:
        return {self.blob_names[f["token"]]: self.blobs[f["token"]] for f in body.get("files", [])}

    def _CreateDataset(self, h, body):
        ref = f"{body['ownerSlug']}/{body['slug']}"
        self.datasets[ref] = {"versions": [self._files(body)], "body": body, "hidden": self.new_invisible}
        self._json(h, 200, {"ref": ref, "url": f"http://localhost/datasets/{ref}", "status": "ok"})

    def _CreateDatasetVersion(self, h, body):
        ref = f"{body.get('ownerSlug')}/{body.get('datasetSlug')}"
        if ref not in self.datasets:
            return self._json(h, 404, {"code": 404, "message": f"dataset {ref} not found"})
        self.datasets[ref]["versions"].append(self._files(body.get("body", body)))
        self.datasets[ref]["hidden"] = self.new_invisible
        self._json(h, 200, {"ref": ref, "url": f"http://localhost/datasets/{ref}", "status": "ok"})

    # ---- kernels.KernelsApiService
    def _SaveKernel(self, h, body):
        ref = body.get("slug", "")
        k = self.kernels.setdefault(ref, {"versions": []})
        k["versions"].append(body)
        k["reads"], k["outcome"], k["hidden"] = 0, None, self.new_invisible
        n = len(k["versions"])
        if self.run_kernel is not None:
            def run():
                k["outcome"] = self.run_kernel(body, self)

            k["thread"] = threading.Thread(target=run, daemon=True)
            k["thread"].start()
        self._json(h, 200, {"ref": ref, "url": f"http://localhost/code/{ref}", "versionNumber": n, "kernelId": 7})

    def _GetKernelSessionStatus(self, h, body):
        ref = f"{body.get('userName')}/{body.get('kernelSlug')}"
        k = self.kernels.get(ref)
        if k is None or self._hidden(k):
            return self._json(h, 404, {"code": 404, "message": f"kernel {ref} not found"})
        k["reads"] += 1
        if self.run_kernel is not None:
            if k["outcome"] is None:
                return self._json(h, 200, {"status": "RUNNING"})
            status, failure = k["outcome"]
        elif k["reads"] <= self.kernel_polls:
            return self._json(h, 200, {"status": "RUNNING"})
        else:
            status, failure = self.kernel_outcome
        self._json(h, 200, {"status": status, **({"failureMessage": failure} if failure else {})})

    # ---- security.OAuthService, users.AccountService: logging in with a token or `kaggle auth login`
    def _IntrospectToken(self, h, body):
        known = body.get("token", "") in self.tokens
        self._json(h, 200, {"active": True, "username": USER, "clientId": "kaggle-cli"} if known else {"active": False})

    def _new_access_token(self) -> str:
        token = f"oauth-access-{len(self.tokens)}"
        self.tokens.add(token)
        return token

    def _ExchangeOAuthToken(self, h, body):
        if body.get("code") != OAUTH_CODE or not body.get("codeVerifier"):
            return self._json(h, 400, {"code": 400, "message": "invalid authorization code"})
        refresh = f"oauth-refresh-{len(self.refresh_tokens) + 1}"
        self.refresh_tokens.add(refresh)
        self._json(h, 200, {"accessToken": self._new_access_token(), "refreshToken": refresh, "tokenType": "Bearer",
                            "expiresIn": 3600, "username": USER})

    def _GenerateAccessToken(self, h, body):
        if body.get("refreshToken") not in self.refresh_tokens:
            return self._json(h, 401, {"code": 401, "message": "Unauthenticated"})
        self._json(h, 200, {"token": self._new_access_token(), "expiresIn": 3600, "userName": USER})
