"""A fake OpenAI Files + Batches server on 127.0.0.1 (and live chat completions), for the batch tests.

Routes: ``POST /v1/files`` (multipart upload), ``GET /v1/files/{id}/content``, ``POST /v1/batches``,
``GET /v1/batches``, ``GET /v1/batches/{id}``, ``POST /v1/batches/{id}/cancel``, and
``POST /v1/chat/completions`` (the live fallback). A batch runs when it has been polled
``polls_to_run`` times (never while ``hold`` is set); it answers each line with
``fault_proxy.fake_completion`` and writes the lines as OpenAI writes them: ``{"id", "custom_id",
"response": {"status_code", "request_id", "body"}, "error"}``, failures in an error file
(``style="openai"``) or in the output file with an ``error`` (``style="vllm"``, as vLLM's
``run_batch`` writes them).

``line_faults`` gives the i-th line the server runs (over all batches) a fault: ``500`` (an error
status), ``empty``/``whitespace``/``refusal`` (a 200 with an unusable answer), ``garbage`` (a line
cut off: not JSON), ``expired`` (never run). ``batch_ends`` gives the i-th batch created its end: ``completed`` (default), ``expired`` or
``cancelled`` (its first half run, the rest in the error file), ``failed`` (nothing run).
``stats`` counts uploads, batch creates, polls, live requests and the usage of the good lines.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from fault_proxy import fake_completion


@dataclass
class BatchStats:
    uploads: int = 0
    creates: int = 0
    polls: int = 0
    live: int = 0  # chat completions sent live
    batched_ids: list = field(default_factory=list)  # custom_ids of each batch created
    faults: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0  # of the good 200 lines, batch and live
    completion_tokens: int = 0
    auth: set = field(default_factory=set)  # Authorization headers seen (kept in memory only)


class FakeBatchServer:
    def __init__(self, polls_to_run: int = 1, line_faults: list[str | None] | None = None,
                 batch_ends: list[str | None] | None = None, style: str = "openai"):
        self.polls_to_run = polls_to_run
        self.line_faults, self.batch_ends = list(line_faults or []), list(batch_ends or [])
        self.style, self.hold, self.batch_routes = style, False, True  # batch_routes False: a live-only server
        self.stats, self.files, self.batches = BatchStats(), {}, {}
        self._lines_run = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                server.stats.auth.add(self.headers.get("authorization"))
                self._reply(*server.get(self.path))

            def do_POST(self) -> None:
                server.stats.auth.add(self.headers.get("authorization"))
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                self._reply(*server.post(self.path, self.headers.get("content-type", ""), body))

            def _reply(self, status: int, payload: bytes | dict) -> None:
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream" if isinstance(payload, bytes)
                                 else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> "FakeBatchServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    # --- routes ---------------------------------------------------------------------------

    def get(self, path: str) -> tuple[int, bytes | dict]:
        with self._lock:
            parts = path.split("?")[0].strip("/").split("/")  # v1, files|batches, id, ...
            if not self.batch_routes:
                return 404, {"error": {"message": f"no route GET {path}"}}
            if parts[1:2] == ["files"] and parts[3:] == ["content"] and parts[2] in self.files:
                return 200, self.files[parts[2]]
            if parts[1:] == ["batches"]:
                return 200, {"object": "list", "data": list(self.batches.values()), "has_more": False}
            if parts[1:2] == ["batches"] and len(parts) == 3 and parts[2] in self.batches:
                self.stats.polls += 1
                return 200, self._advance(self.batches[parts[2]])
            return 404, {"error": {"message": f"no route GET {path}"}}

    def post(self, path: str, ctype: str, body: bytes) -> tuple[int, dict]:
        with self._lock:
            parts = path.split("?")[0].strip("/").split("/")
            if not self.batch_routes and parts[1] in ("files", "batches"):
                return 404, {"error": {"message": f"no route POST {path}"}}
            if parts[1:] == ["files"]:
                self.stats.uploads += 1
                return 200, self._file(_multipart_file(ctype, body), "batch")
            if parts[1:] == ["batches"]:
                return 200, self._create(json.loads(body))
            if parts[1:2] == ["batches"] and parts[3:] == ["cancel"] and parts[2] in self.batches:
                self.batches[parts[2]]["status"] = "cancelling"
                return 200, self.batches[parts[2]]
            if parts[1:] == ["chat", "completions"]:
                self.stats.live += 1
                return 200, self._good(json.loads(fake_completion(json.loads(body))))
            return 404, {"error": {"message": f"no route POST {path}"}}

    # --- the fake batch -------------------------------------------------------------------

    def _file(self, data: bytes, purpose: str) -> dict:
        file_id = f"file-{uuid.uuid4().hex[:12]}"
        self.files[file_id] = data
        return {"id": file_id, "object": "file", "bytes": len(data), "created_at": int(time.time()),
                "filename": "upload.jsonl", "purpose": purpose, "status": "processed"}

    def _create(self, req: dict) -> dict:
        self.stats.creates += 1
        lines = [json.loads(line) for line in self.files[req["input_file_id"]].decode().splitlines() if line.strip()]
        self.stats.batched_ids.append([line["custom_id"] for line in lines])
        end = self.batch_ends[self.stats.creates - 1] if self.stats.creates <= len(self.batch_ends) else None
        batch = {"id": f"batch_{uuid.uuid4().hex[:12]}", "object": "batch", "endpoint": req["endpoint"],
                 "input_file_id": req["input_file_id"], "completion_window": req["completion_window"],
                 "status": "validating", "created_at": int(time.time()), "output_file_id": None, "error_file_id": None,
                 "request_counts": {"total": len(lines), "completed": 0, "failed": 0}, "errors": None,
                 "_lines": lines, "_polls": 0, "_end": end or "completed"}
        self.batches[batch["id"]] = batch
        return _public(batch)

    def _advance(self, batch: dict) -> dict:
        if batch["status"] == "cancelling":
            self._run(batch, "cancelled")
        elif batch["status"] in ("validating", "in_progress") and not self.hold:
            batch["_polls"] += 1
            batch["status"] = "in_progress"
            if batch["_polls"] >= self.polls_to_run:
                self._run(batch, batch["_end"])
        return _public(batch)

    def _run(self, batch: dict, end: str) -> None:
        lines = batch["_lines"]
        if end == "failed":
            batch.update(status="failed", errors={"object": "list", "data": [
                {"code": "invalid_request", "message": "the model is not available in the Batch API (injected)"}]})
            return
        run = lines if end == "completed" else lines[: len(lines) // 2]
        out, err = [], []
        for line in lines:
            fault = "expired" if line not in run else self._next_fault()
            row = self._line(line, fault, end)
            if isinstance(row, str):  # a line that is not JSON
                out.append(row)
                continue
            ok = row["error"] is None and row["response"]["status_code"] == 200
            (out if ok or (self.style == "vllm" and row["response"] is not None) else err).append(row)
        counts = batch["request_counts"]
        counts["failed"] = sum(1 for r in out + err if isinstance(r, str) or r["error"] is not None
                               or r["response"]["status_code"] != 200)
        counts["completed"] = counts["total"] - counts["failed"]
        batch.update(status=end, output_file_id=self._file(_jsonl(out), "batch_output")["id"] if out else None,
                     error_file_id=self._file(_jsonl(err), "batch_output")["id"] if err else None)

    def _next_fault(self) -> str | None:
        self._lines_run += 1
        return self.line_faults[self._lines_run - 1] if self._lines_run <= len(self.line_faults) else None

    def _line(self, line: dict, fault: str | None, end: str) -> dict:
        row = {"id": f"batch_req_{uuid.uuid4().hex[:12]}", "custom_id": line["custom_id"]}
        request_id = f"req_{uuid.uuid4().hex[:12]}"
        if fault is not None:
            self.stats.faults[fault] += 1
        if fault == "garbage":
            return '{"id": "batch_req_x", "custom_id": "' + line["custom_id"][:9]
        if fault == "expired":
            code = "batch_cancelled" if end == "cancelled" else "batch_expired"
            return row | {"response": None, "error": {"code": code, "message": f"the request was not run ({end})"}}
        if fault == "500":
            if self.style == "vllm":  # vLLM: the status and the message, no body
                return row | {"response": {"status_code": 500, "request_id": request_id, "body": None},
                              "error": "internal server error (injected)"}
            return row | {"response": {"status_code": 500, "request_id": request_id, "body": {
                "error": {"message": "internal server error (injected)", "type": "server_error"}}}, "error": None}
        body = json.loads(fake_completion(line["body"]))
        if fault in ("empty", "whitespace", "refusal"):
            content = {"empty": "", "whitespace": " \n\t ", "refusal": None}[fault]
            body["choices"][0]["message"] |= {"content": content,
                                              "refusal": "I can't help with that." if content is None else None}
        else:
            self._good(body)
        return row | {"response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}

    def _good(self, body: dict) -> dict:
        self.stats.prompt_tokens += body["usage"]["prompt_tokens"]
        self.stats.completion_tokens += body["usage"]["completion_tokens"]
        return body


def _public(batch: dict) -> dict:
    return {k: v for k, v in batch.items() if not k.startswith("_")}


def _jsonl(rows: list[dict]) -> bytes:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows).encode()


def _multipart_file(ctype: str, body: bytes) -> bytes:
    """The bytes of the part named ``file`` of a multipart/form-data body."""
    boundary = ctype.split("boundary=", 1)[1].strip('"').encode()
    for part in body.split(b"--" + boundary):
        head, _, data = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return data.removesuffix(b"\r\n")
    raise ValueError("no file part in the upload")
