"""Download an official RAM / RAM++ release and convert it (`ram-edge pull`).

The weights come from the Hugging Face Hub through `huggingface_hub.hf_hub_download` (its cache, its resume from a
`.incomplete` file, revision pinning; `HF_ENDPOINT` selects a mirror). The tag, Chinese tag and threshold files come
from the official GitHub repository at a pinned commit and are checked against the sha256 sums recorded here.
Both tables below are data: a new release is a new row, not a new branch of code.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable

from ..checkpoint_dir import read_checkpoint_dir, write_checkpoint_config
from ..errors import MissingDependencyError, RamEdgeError
from ..fileio import atomic_dir, refuse_existing
from .convert import convert_official


class DownloadError(RamEdgeError):
    """A file of an official release cannot be downloaded, or is not the file that was pinned."""


@dataclass(frozen=True)
class OfficialModel:
    """An official release on the Hugging Face Hub and what converting it needs that its tensors cannot tell."""

    name: str
    aliases: tuple[str, ...]
    repo_id: str
    filename: str
    family: str
    image_size: int
    default_dir: str


@dataclass(frozen=True)
class OfficialFile:
    """A file of the official GitHub repository at OFFICIAL_COMMIT, with its sha256."""

    path: str
    sha256: str


OFFICIAL_MODELS = (
    OfficialModel("ram-plus", ("ram_plus", "ram++"), "xinyu1205/recognize-anything-plus-model",
                  "ram_plus_swin_large_14m.pth", "ram_plus", 384, "ram_plus_l384"),
    OfficialModel("ram", (), "xinyu1205/recognize_anything_model", "ram_swin_large_14m.pth", "ram", 384, "ram_l384"),
)

OFFICIAL_REPOSITORY = "xinyu1205/recognize-anything"
OFFICIAL_COMMIT = "7cb804a8609e9f4b1a50b7f31436d2df40bb9481"
OFFICIAL_FILES_URL = f"https://raw.githubusercontent.com/{OFFICIAL_REPOSITORY}/{OFFICIAL_COMMIT}"
FILES_URL_ENV = "RAM_EDGE_OFFICIAL_FILES_URL"

# convert_official's keyword -> the file it reads.
TAG_FILES = {
    "tags": OfficialFile("ram/data/ram_tag_list.txt", "5d96d2f7225527480ad773aaac76b6e5c08a18adf6eae9ca7d2ab923d5e7bd8b"),
    "tags_zh": OfficialFile("ram/data/ram_tag_list_chinese.txt",
                            "c912657a0f30be7b2f5df6ccffa17e1d84561d0bea508528e38b6d0d711bcfbe"),
    "thresholds": OfficialFile("ram/data/ram_tag_list_threshold.txt",
                               "b6f81d0de1bc7f9c251af512c413eae976c77dbfbadf700d4e3d90510f4c6447"),
}

# Seconds to wait before each new attempt after a dropped connection or a timeout; a weights download resumes from
# what huggingface_hub kept in its `.incomplete` file.
RETRY_DELAYS = (1.0, 4.0, 10.0)
TIMEOUT_S = 30.0
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass
class PullReport:
    """What `pull_official` did, for the CLI to print."""

    model: OfficialModel
    out_dir: Path
    source: dict
    num_classes: int
    image_size: int

    def next_commands(self) -> list[str]:
        """The commands a user runs next on the pulled checkpoint."""
        return [f"ram-edge tag PHOTOS --model {self.out_dir}",
                f"ram-edge export {self.out_dir} -o BUNDLE --precision int8 --calib YOUR_PHOTOS/"]


def model_names() -> str:
    """The valid names, aliases in brackets, for messages and --help."""
    return ", ".join(m.name + (f" ({', '.join(m.aliases)})" if m.aliases else "") for m in OFFICIAL_MODELS)


def official_model(name: str) -> OfficialModel:
    """The release a name or alias stands for."""
    for model in OFFICIAL_MODELS:
        if name.lower() in (model.name, *model.aliases):
            return model
    raise RamEdgeError(f"unknown model {name!r}; valid names: {model_names()}")


def files_url() -> str:
    """Where the tag files are downloaded from: $RAM_EDGE_OFFICIAL_FILES_URL (a mirror, a test server) or GitHub."""
    return (os.environ.get(FILES_URL_ENV) or OFFICIAL_FILES_URL).rstrip("/")


def _reason(exc: BaseException) -> str:
    """A short reason for a failed request (urllib's own reason when it wraps one)."""
    reason = getattr(exc, "reason", None) if isinstance(exc, urllib.error.URLError) else None
    text = str(reason or exc).strip()
    return text.splitlines()[0][:160] if text else type(exc).__name__


def _unreachable(url: str, exc: BaseException) -> DownloadError:
    reason = _reason(exc)
    return DownloadError(
        f"cannot download {url} ({reason}); check the network, or use a mirror (HF_ENDPOINT for the Hugging Face "
        f"weights, {FILES_URL_ENV} for the tag files), or download the files by hand and run `ram-edge convert`")


def _transient_errors() -> tuple[type[BaseException], ...]:
    """Errors after which another attempt may succeed: dropped connections, timeouts, an unreachable host."""
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError, http.client.IncompleteRead, urllib.error.URLError]
    with contextlib.suppress(ImportError):
        from huggingface_hub.errors import LocalEntryNotFoundError  # the HEAD request failed: no network, 5xx

        errors.append(LocalEntryNotFoundError)
    with contextlib.suppress(ImportError):
        import requests

        errors += [requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError]
    with contextlib.suppress(ImportError):
        import httpx  # huggingface_hub 1.x

        errors.append(httpx.TransportError)
    return tuple(errors)


def _with_retries(url: str, attempt: Callable[[], Path], log: Callable[[str], None]) -> Path:
    transient = _transient_errors()
    for delay in (*RETRY_DELAYS, None):
        try:
            return attempt()
        except transient as exc:
            if delay is None:
                raise _unreachable(url, exc) from exc
            log(f"download of {url} failed ({_reason(exc)}); retrying in {delay:g} s")
            time.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


def _fetch_verified(url: str, expected_sha256: str, dest: Path) -> Path:
    """Download `url` to a temporary file beside `dest`, check its sha256, then move it onto `dest`."""
    partial = dest.with_name(f".{dest.name}.part")
    digest = hashlib.sha256()
    try:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(partial, "wb") as fh:
                while block := response.read(1 << 16):
                    digest.update(block)
                    fh.write(block)
        except urllib.error.HTTPError as exc:
            if exc.code >= 500:
                raise  # retried
            raise DownloadError(f"cannot download {url}: HTTP {exc.code} {exc.reason}; check {FILES_URL_ENV} "
                                f"(unset, the files come from GitHub at commit {OFFICIAL_COMMIT[:12]})") from None
        got = digest.hexdigest()
        if got != expected_sha256:
            raise DownloadError(
                f"{dest.name} from {url} is not the pinned file: sha256 {got[:16]}... instead of {expected_sha256[:16]}...; "
                f"the server or mirror serves another version; nothing was written")
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)
    return dest


def _import_hub():
    try:
        import huggingface_hub
    except ImportError as exc:
        if getattr(exc, "name", None) not in ("huggingface_hub", None):
            raise
        raise MissingDependencyError("`ram-edge pull` needs the package 'huggingface_hub', which is not installed; "
                                     "install it with: pip install huggingface_hub") from None
    return huggingface_hub


def _snapshot_commit(path: str | Path, filename: str) -> str | None:
    """The commit huggingface_hub resolved, read from its cache layout `.../snapshots/<commit>/<filename>`."""
    parts = Path(path).parts
    depth = len(PurePosixPath(filename).parts)
    if len(parts) > depth + 1 and parts[-depth - 2] == "snapshots" and COMMIT_RE.match(parts[-depth - 1]):
        return parts[-depth - 1]
    return None


def download_weights(model: OfficialModel, *, revision: str | None = None, cache_dir: str | Path | None = None,
                     log: Callable[[str], None] = lambda _: None) -> tuple[Path, dict]:
    """Download (or find in the cache) a release's weights: (local path, where they came from)."""
    hub = _import_hub()
    from huggingface_hub import errors as hub_errors

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not when huggingface_hub was imported
    revision = revision or "main"
    url = hub.hf_hub_url(model.repo_id, model.filename, revision=revision, endpoint=endpoint)
    log(f"weights: {model.repo_id}/{model.filename} at {revision} (huggingface_hub cache; an interrupted download resumes)")
    try:
        path = _with_retries(url, lambda: Path(hub.hf_hub_download(
            model.repo_id, model.filename, revision=revision, cache_dir=cache_dir, endpoint=endpoint)), log)
    except hub_errors.RevisionNotFoundError:
        raise DownloadError(f"revision {revision!r} not found in {model.repo_id}; give a branch, tag or commit of "
                            "that repository") from None
    except (hub_errors.RepositoryNotFoundError, hub_errors.EntryNotFoundError, hub_errors.HfHubHTTPError) as exc:
        raise DownloadError(f"cannot download {url}: {str(exc).splitlines()[0][:200]}") from None
    source = {"repo": model.repo_id, "file": model.filename, "revision": revision,
              "commit": _snapshot_commit(path, model.filename), "url": url}
    return path, source


def download_tag_files(dest: Path, log: Callable[[str], None] = lambda _: None) -> dict[str, Path]:
    """The official tag files, checked against their pinned sha256: convert_official keyword -> path in `dest`."""
    base = files_url()
    log(f"tag files: {base}/{PurePosixPath(TAG_FILES['tags'].path).parent}/")
    paths = {}
    for keyword, file in TAG_FILES.items():
        url = f"{base}/{file.path}"
        target = dest / PurePosixPath(file.path).name
        paths[keyword] = _with_retries(url, lambda u=url, f=file, t=target: _fetch_verified(u, f.sha256, t), log)
    return paths


def pull_official(name: str, out_dir: str | Path | None = None, *, revision: str | None = None,
                  cache_dir: str | Path | None = None, overwrite: bool = False,
                  log: Callable[[str], None] = lambda _: None) -> PullReport:
    """Download an official release (weights and tag files) and convert it into a checkpoint directory.

    The tag files come first (small; a checksum failure stops before gigabytes of weights). The directory is
    written all at once: a failure leaves nothing at `out_dir`.
    """
    model = official_model(name)
    out_dir = Path(out_dir or model.default_dir)
    refuse_existing(out_dir, overwrite)  # before any download
    _import_hub()
    with tempfile.TemporaryDirectory(prefix="ram-edge-pull-") as tmp:
        tag_files = download_tag_files(Path(tmp), log)
        weights, hub_source = download_weights(model, revision=revision, cache_dir=cache_dir, log=log)
        log(f"converting {weights.name} into {out_dir}")
        with atomic_dir(out_dir, overwrite=overwrite) as staged:
            # Convert inside the staged directory, add where the files came from, then publish it all at once.
            converted = staged / "converted"
            report = convert_official(weights, converted, family=model.family, image_size=model.image_size,
                                      **tag_files)
            for entry in converted.iterdir():
                os.replace(entry, staged / entry.name)
            converted.rmdir()
            source = dict(read_checkpoint_dir(staged).source)
            source["hub"] = hub_source
            source["tag_files"] = {"repository": OFFICIAL_REPOSITORY, "commit": OFFICIAL_COMMIT, "url": files_url(),
                                   **{k: f.sha256 for k, f in TAG_FILES.items()}}
            write_checkpoint_config(staged, report.config, source)
    return PullReport(model=model, out_dir=out_dir, source=source, num_classes=report.config.num_classes,
                      image_size=report.config.swin.image_size)

