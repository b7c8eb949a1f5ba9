"""`ram-edge tag LIBRARY -o FILE`: results reach the file batch by batch, a killed run loses none of them, and a rerun
tags only what is missing (ram_edge/tag_output.py). Uses the shipped default model: torch-free, a few ms per image."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from ram_edge.default_model import PACKAGE_DIR
from ram_edge.tag_output import NpyRowWriter, OutputFileError, ResultsFile

EXAMPLES = sorted((PACKAGE_DIR / "examples").glob("*.png"))


def _library(root, count: int):
    """`count` images: the shipped examples, resized and flipped so that each is its own file."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        img = Image.open(EXAMPLES[i % len(EXAMPLES)]).convert("RGB").resize((64 + i % 7, 64))
        (img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i % 2 else img).save(root / f"{i:05d}.png")
    return root


def _tag(*args):
    return run_cli("tag", *args)


def _records(path) -> dict[str, dict]:
    lines = path.read_text(encoding="utf-8").splitlines()
    records = {json.loads(line)["image"]: json.loads(line) for line in lines}
    assert len(records) == len(lines), "an image is recorded twice"
    return records


def test_output_file_resumes_and_skips_what_it_holds(tmp_path):
    library = _library(tmp_path / "photos", 12)
    out = tmp_path / "tags.jsonl"
    first = _tag(library, "-o", out)
    assert first.exit_code == 0, first.output
    assert first.stdout == "" and "wrote 12 image(s) to" in first.stderr
    straight = _records(out)
    assert len(straight) == 12 and all("tags" in r for r in straight.values())

    again = _tag(library, "-o", out)
    assert again.exit_code == 0 and "wrote 0 image(s)" in again.stderr and "12 already there were skipped" in again.stderr
    assert _records(out) == straight

    # A run killed while writing its last line: the partial line goes, that image is tagged again.
    data = out.read_bytes()
    last_start = data.rstrip(b"\n").rfind(b"\n") + 1
    out.write_bytes(data[: last_start + 9])
    (library / "new.png").write_bytes((library / "00000.png").read_bytes())
    resumed = _tag(library, "-o", out)
    assert resumed.exit_code == 0, resumed.output
    assert "wrote 2 image(s)" in resumed.stderr and "11 already there were skipped" in resumed.stderr
    records = _records(out)
    assert records[str(library / "new.png")]["tags"] == straight[str(library / "00000.png")]["tags"]
    del records[str(library / "new.png")]
    assert records == straight


def test_bad_output_files_are_one_line_errors_that_change_nothing(tmp_path):
    library = _library(tmp_path / "photos", 2)
    notes = tmp_path / "notes.txt"
    notes.write_text("my shopping list\n")
    result = _tag(library, "-o", notes)
    assert result.exit_code == 2 and f"{notes}:1: not a line of `ram-edge tag --output`" in result.stderr
    assert notes.read_text() == "my shopping list\n"
    notes.write_text('{"image": "a.png", "tags": []}\nmilk, eggs')  # ours but for a last line without its newline
    result = _tag(library, "-o", notes)
    assert result.exit_code == 2 and f"{notes}:2: not a line" in result.stderr
    assert notes.read_text() == '{"image": "a.png", "tags": []}\nmilk, eggs'  # nothing cut

    out = tmp_path / "tags.jsonl"
    assert _tag(library / "00000.png", "-o", out).exit_code == 0
    held = out.read_text()
    result = _tag(library, "-o", out, "--scores-out", tmp_path / "s.npy")
    assert result.exit_code == 2 and "cannot resume" in result.stderr and "--scores-out" in result.stderr
    assert out.read_text() == held and not (tmp_path / "s.npy").exists()

    result = _tag(library, "-o", tmp_path)
    assert result.exit_code == 2 and "is a directory" in result.stderr
    result = _tag(library, "-o", tmp_path / "new.jsonl", "--model", tmp_path / "no-such-model")
    assert result.exit_code == 2 and not (tmp_path / "new.jsonl").exists()  # no empty file left behind
    with pytest.raises(OutputFileError, match="is a folder; give a file name"):
        ResultsFile(tmp_path)


def test_a_second_tagger_on_the_same_output_file_is_refused(tmp_path):
    library = _library(tmp_path / "photos", 2)
    out = tmp_path / "tags.jsonl"
    with ResultsFile(out) as holder:
        holder.write({"image": "elsewhere.png", "tags": []})
        holder.flush()
        result = _tag(library, "-o", out)
    assert result.exit_code == 2 and "is being written by another ram-edge process" in result.stderr
    assert out.read_text() == '{"image": "elsewhere.png", "tags": []}\n'  # the refused run wrote nothing


@pytest.mark.slow
@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is POSIX")
def test_a_killed_library_run_keeps_its_results_and_the_rerun_finishes_it(tmp_path):
    library = _library(tmp_path / "photos", 1000)
    out = tmp_path / "tags.jsonl"
    command = [sys.executable, "-m", "ram_edge.cli.main", "tag", str(library), "-o", str(out), "--threads", "1"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while (not out.exists() or out.stat().st_size < 2000) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    kept = _records(out)  # whole lines only (a line torn by a kill would be dropped by the rerun)
    assert 0 < len(kept) < 1000
    assert err.strip().splitlines()[-1] == (f"terminated: {len(kept)} image(s) are in {out}; run the same command "
                                            "again to tag the rest")
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"wrote {1000 - len(kept)} image(s)" in rerun.stderr
    records = _records(out)
    assert sorted(records) == sorted(str(p) for p in library.glob("*.png"))
    straight = tmp_path / "straight.jsonl"
    assert subprocess.run([*command[:-4], "-o", str(straight)], capture_output=True, timeout=600).returncode == 0
    assert records == _records(straight)


def test_scores_are_written_row_by_row_as_a_normal_npy(tmp_path):
    rows = [np.arange(4, dtype=np.float32), None, np.full(4, 0.5, np.float32)]
    with open(tmp_path / "s.npy", "wb") as fh:
        writer = NpyRowWriter(fh, 3, 4)
        for row in rows:
            writer.write(row)
        with pytest.raises(ValueError):
            writer.write(rows[0])
    loaded = np.load(tmp_path / "s.npy")
    assert loaded.dtype == np.float32 and loaded.shape == (3, 4)
    np.testing.assert_array_equal(loaded[0], rows[0])
    assert np.isnan(loaded[1]).all()
    np.testing.assert_array_equal(loaded[2], rows[2])


def test_stdout_gets_each_result_and_the_scores_match_them(tmp_path):
    library = _library(tmp_path / "photos", 5)
    (library / "broken.jpg").write_bytes(b"not an image")
    result = _tag(library, "--json", "--scores-out", tmp_path / "s.npy", "--threshold", "0.5", "--batch-size", "2")
    assert result.exit_code == 1 and "1 of 6 input(s) failed" in result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["image"] for line in lines] == sorted(str(p) for p in library.iterdir())
    probs = np.load(tmp_path / "s.npy")
    assert probs.shape[0] == 6
    for line, row in zip(lines, probs):
        if line["image"].endswith("broken.jpg"):
            assert "error" in line and np.isnan(row).all()
        else:
            assert {t["score"] for t in line["tags"]} == {round(float(p), 6) for p in row if p > 0.5}
    assert sorted(os.listdir(tmp_path)) == ["photos", "s.npy"]  # no temporary file left beside it


@pytest.fixture
def tiny_disk(tmp_path):
    """A 64 KiB tmpfs: a real full disk (needs root, as in CI's container; skipped elsewhere)."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (root needed): {proc.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.slow
def test_a_full_disk_stops_the_run_with_one_line_and_the_rerun_finishes_it(tmp_path, tiny_disk):
    library = _library(tmp_path / "photos", 300)
    out = tiny_disk / "tags.jsonl"
    full = _tag(library, "-o", out, "--threshold", "0")  # every tag fires: long lines fill 64 KiB
    assert full.exit_code == 2, full.output
    kept = len(out.read_bytes().split(b"\n")) - 1  # complete lines
    assert 0 < kept < 300
    assert full.stderr.strip() == (f"error: cannot write {out}: No space left on device; free space there or choose "
                                   f"another location; {kept} image(s) are in {out}; run the same command again to tag "
                                   "the rest")
    subprocess.run(["mount", "-o", "remount,size=32m", str(tiny_disk)], check=True)
    rerun = _tag(library, "-o", out, "--threshold", "0")
    assert rerun.exit_code == 0 and f"{kept} already there were skipped" in rerun.stderr, rerun.output
    assert sorted(_records(out)) == sorted(str(p) for p in library.glob("*.png"))

    # The probability matrix on a full disk: one line naming it, and no temporary file left behind.
    out.unlink()
    subprocess.run(["mount", "-o", "remount,size=64k", str(tiny_disk)], check=True)
    scores = _tag(library, "--scores-out", tiny_disk / "s.npy")
    assert scores.exit_code == 2, scores.output
    assert scores.stderr.strip().splitlines()[-1] == (f"error: cannot write {tiny_disk / 's.npy'}: No space left on "
                                                      "device; free space there or choose another location")
    assert list(tiny_disk.iterdir()) == []  # the partial matrix is gone


def test_outputs_that_cannot_be_written_fail_before_any_work(tmp_path):
    library = _library(tmp_path / "photos", 2)
    a_file = library / "00000.png"
    for args in (("-o", a_file / "tags.jsonl"), ("--scores-out", a_file / "s.npy")):
        result = _tag(library, *args)
        assert result.exit_code == 2 and f"cannot write {a_file}" in result.stderr and "is not a folder" in result.stderr
    for args in (("-o", os.devnull), ("--scores-out", os.devnull)):
        result = _tag(library, *args)
        assert result.exit_code == 2 and "special file; give the path of a regular file" in result.stderr
    assert sorted(p.name for p in library.iterdir()) == ["00000.png", "00001.png"]
