"""`ram-edge pull` end to end against a local server on 127.0.0.1 that answers as the Hugging Face Hub does
(HEAD with X-Repo-Commit / ETag / Content-Length, GET with Range) and as GitHub's raw files do. The golden tiny RAM
stands in for the official RAM weights, the official tag files (byte copies of the pinned commit) for GitHub's.

Covered: a full pull that converts to a checkpoint that tags; a connection dropped mid-download of the weights that
the pull's own retry resumes with a Range request from huggingface_hub's `.incomplete` file; a corrupted tag file
(one-line checksum error, nothing left behind); an unknown name; an unreachable server."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import require_shared, run_cli

pytest.importorskip("torch", reason="the torch extra is needed: pip install 'ram-edge[torch]'")
pytest.importorskip("huggingface_hub", reason="ram-edge pull needs huggingface_hub: pip install huggingface_hub")

from huggingface_hub import constants  # noqa: E402

from ram_edge.models import pull as pull_module  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # what the fake hub resolves `main` to
SERVER_LIFETIME_S = 120  # the server stops by itself after this, whatever the test does


class HubLikeServer:
    """Serves {repo}/resolve/{revision}/{file} as the hub and /gh/{path} as GitHub's raw files, and records requests."""

    def __init__(self, hub_files: dict[str, bytes], raw_files: dict[str, bytes], drop_first_get_after: int | None = None):
        self.hub_files, self.raw_files = hub_files, raw_files
        self.drop_first_get_after = drop_first_get_after
        self.requests: list[tuple[str, str, str | None]] = []  # (method, path, Range header)
        server = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10

            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self._answer(body=False)

            def do_GET(self):
                self._answer(body=True)

            def _answer(self, body: bool):
                server.requests.append((self.command, self.path, self.headers.get("Range")))
                data, hub = server.lookup(self.path)
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                if body and self.headers.get("Range"):
                    start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                self.send_response(206 if start else 200)
                if hub:
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if not body:
                    return
                drop = server.drop_first_get_after
                if hub and drop is not None:
                    server.drop_first_get_after = None
                    self.wfile.write(data[start:start + drop])
                    self.wfile.flush()
                    self.close_connection = True  # the socket closes with the body short of Content-Length
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def lookup(self, path: str) -> tuple[bytes | None, bool]:
        if path.startswith("/gh/"):
            return self.raw_files.get(path[len("/gh/"):]), False
        parts = path.lstrip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            return self.hub_files.get(f"{parts[0]}/{parts[1]}/{'/'.join(parts[4:])}"), True
        return None, False

    def weights_gets(self) -> list[str | None]:
        return [r for m, p, r in self.requests if m == "GET" and not p.startswith("/gh/")]

    def __enter__(self):
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(SERVER_LIFETIME_S, self.httpd.shutdown)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc):
        self.timer.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)


@pytest.fixture
def official(monkeypatch, tmp_path):
    """The served files, the environment pointing at the server, and the RAM row sized for the 224-px golden model."""
    golden = require_shared("golden", "ram_tiny")
    data = require_shared("official-data", "ram", "data")
    ram = pull_module.official_model("ram")
    # The golden tiny RAM is a 224-px model standing in for the 384-px release; the product's row keeps 384.
    rows = tuple(dataclasses.replace(m, image_size=224) if m is ram else m for m in pull_module.OFFICIAL_MODELS)
    monkeypatch.setattr(pull_module, "OFFICIAL_MODELS", rows)
    monkeypatch.setattr(pull_module, "RETRY_DELAYS", (0.1, 0.1, 0.1))
    monkeypatch.chdir(tmp_path)
    hub_files = {f"{ram.repo_id}/{ram.filename}": (golden / "model.pth").read_bytes()}
    raw_files = {f.path: (data / Path(f.path).name).read_bytes() for f in pull_module.TAG_FILES.values()}
    return hub_files, raw_files, golden


def _serve(monkeypatch, server: HubLikeServer) -> HubLikeServer:
    monkeypatch.setenv("HF_ENDPOINT", server.url)
    monkeypatch.setenv(pull_module.FILES_URL_ENV, f"{server.url}/gh")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    return server


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.exit_code == 2 and len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    return lines[0]


def test_pull_resumes_a_dropped_download_and_converts_to_a_checkpoint_that_tags(official, monkeypatch, tmp_path):
    hub_files, raw_files, golden = official
    # huggingface_hub writes what it received in chunks of DOWNLOAD_CHUNK_SIZE (10 MB): drop the connection
    # after one chunk and a half (the golden weights are 22.8 MB), and the resume asks for what follows the chunk.
    chunk = constants.DOWNLOAD_CHUNK_SIZE
    assert len(next(iter(hub_files.values()))) > 2 * chunk
    with _serve(monkeypatch, HubLikeServer(hub_files, raw_files, drop_first_get_after=chunk + chunk // 2)) as server:
        result = run_cli("pull", "ram", "--cache-dir", tmp_path / "hf", "--json")
        assert result.exit_code == 0, result.output
        assert server.weights_gets() == [None, f"bytes={chunk}-"], server.requests
    assert "failed" in result.stderr and "retrying in" in result.stderr
    summary = json.loads(result.stdout)
    out = tmp_path / "ram_l384"
    assert summary["output"] == "ram_l384" and summary["num_classes"] == 4585 and summary["image_size"] == 224
    assert summary["next"] == ["ram-edge tag PHOTOS --model ram_l384",
                               "ram-edge export ram_l384 -o BUNDLE --precision int8 --calib YOUR_PHOTOS/"]
    source = json.loads((out / "config.json").read_text())["source"]
    assert source["hub"] == {"repo": "xinyu1205/recognize_anything_model", "file": "ram_swin_large_14m.pth",
                             "revision": "main", "commit": COMMIT,
                             "url": f"{server.url}/xinyu1205/recognize_anything_model/resolve/main/ram_swin_large_14m.pth"}
    assert source["sha256"] == hashlib.sha256(next(iter(hub_files.values()))).hexdigest()
    assert source["tag_files"]["commit"] == pull_module.OFFICIAL_COMMIT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "ram_l384"]  # no temporary files beside the output

    expected = json.loads((golden / "tags.json").read_text())
    index = expected["images"].index("demo2.jpg")
    tagged = run_cli("tag", golden / "images" / "demo2.jpg", "--model", out, "--runtime", "torch", "--json")
    assert tagged.exit_code == 0, tagged.output
    tags = (golden / "ram_tag_list.txt").read_text().splitlines()
    got = sorted(t["tag"] for t in json.loads(tagged.stdout)["tags"])
    assert got == sorted(tags[i] for i in expected["tag_indices"][index])


def test_corrupted_tag_file_is_one_line_and_leaves_nothing(official, monkeypatch, tmp_path):
    hub_files, raw_files, _ = official
    thresholds = pull_module.TAG_FILES["thresholds"].path
    raw_files[thresholds] = raw_files[thresholds].replace(b"0.", b"0,", 1)
    with _serve(monkeypatch, HubLikeServer(hub_files, raw_files)) as server:
        result = run_cli("pull", "ram", "-o", tmp_path / "out" / "ram", "--cache-dir", tmp_path / "hf")
        assert server.weights_gets() == []  # stopped before the weights
    line = _error_line(result)
    assert "ram_tag_list_threshold.txt" in line and "sha256" in line, line
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "hf").exists() or not any(p.is_file() for p in (tmp_path / "hf").rglob("*"))


def test_unknown_name_lists_the_valid_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    line = _error_line(run_cli("pull", "ram-large"))
    assert "'ram-large'" in line and "ram-plus (ram_plus, ram++), ram" in line, line
    assert list(tmp_path.iterdir()) == []


def test_unreachable_server_names_the_url_and_the_ways_around(official, monkeypatch, tmp_path):
    with HubLikeServer({}, {}) as server:  # started and stopped: nothing listens on its port any more
        url = server.url
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv(pull_module.FILES_URL_ENV, f"{url}/gh")
    line = _error_line(run_cli("pull", "ram-plus", "--cache-dir", tmp_path / "hf"))
    assert f"{url}/gh/ram/data/ram_tag_list.txt" in line and "HF_ENDPOINT" in line and "ram-edge convert" in line, line
    assert not (tmp_path / "ram_plus_l384").exists()
