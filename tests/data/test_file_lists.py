"""Curating a list of paths and URLs (local, http, an fsspec object store) instead of a
folder: every entry ends in the training table or in rejected.csv with its reason."""

from __future__ import annotations

import contextlib
import functools
import http.server
import threading

import fsspec
import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from opensora_core.cli import app
from opensora_core.curation.ingest import register_inputs
from opensora_core.curation.partitions import read_manifest
from opensora_core.curation.runner import curate
from opensora_core.curation.storage import FileList, Storage, open_source
from opensora_core.data.synthetic import moving_shape_clip, shape_image
from tests.data.corpus import corpus_config


def _video(path, color="red", direction="left", seed=0):
    from opensora_core.data.video_io import write_video

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_video(path, moving_shape_clip(24, 96, 128, color, direction, "circle", seed=seed), fps=12)


@contextlib.contextmanager
def _http_server(folder):
    """A file server on 127.0.0.1 (an ephemeral port) for `folder`."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture()
def listed(tmp_path):
    """A .txt list naming: a relative path with a space and non-ASCII, an absolute
    path (twice), a comment and a blank line, a missing file, a text file, a video and
    its sidecar caption served over http, an image in an fsspec memory store."""
    _video(tmp_path / "local" / "été clip.mp4", "red", "left", 1)
    absolute = _video(tmp_path / "elsewhere" / "b.mp4", "blue", "up", 2)
    (tmp_path / "local" / "notes.md").write_text("# not a video\n")
    served = tmp_path / "served"
    _video(served / "c.mp4", "green", "right", 3)
    (served / "c.txt").write_text("a green circle moving right\n")
    import cv2

    ok, png = cv2.imencode(".png", cv2.cvtColor(shape_image(96, 128, "yellow", "square", seed=4), cv2.COLOR_RGB2BGR))
    assert ok
    memory = fsspec.filesystem("memory")
    memory.pipe("/lists-test/d.png", png.tobytes())
    with _http_server(served) as base:
        listing = tmp_path / "local" / "inputs.txt"
        listing.write_text("\n".join([
            "# raw files for the test", "été clip.mp4", str(absolute), "", str(absolute), "gone.mp4", "notes.md",
            f"{base}/c.mp4", "memory://lists-test/d.png"]) + "\n")
        yield tmp_path, listing, base
    memory.rm("/lists-test", recursive=True)


def test_every_listed_entry_is_kept_or_rejected_with_its_reason(listed, monkeypatch):
    root, listing, base = listed
    source = open_source(listing)
    assert isinstance(source, FileList) and source.duplicates == 1 and len(source.entries) == 6
    summary = curate(listing, root / "out", corpus_config())
    meta, rejected = pd.read_csv(root / "out" / "meta.csv"), pd.read_csv(root / "out" / "rejected.csv")
    sources = set(meta["source"]) | set(rejected["path"])
    assert sources == set(source.entries) and not set(meta["source"]) & set(rejected["path"])
    assert set(meta["source"]) == {str(root / "local" / "été clip.mp4"), str(root / "elsewhere" / "b.mp4"),
                                   f"{base}/c.mp4", "memory://lists-test/d.png"}
    reasons = dict(zip(rejected["path"].map(lambda p: p.rsplit("/", 1)[-1]), rejected["reason"]))
    assert reasons["gone.mp4"] == "not found"
    assert "not a readable media file" in reasons["notes.md"]
    # The http video is downloaded, cut and captioned from the sidecar served beside it.
    served = meta[meta["source"] == f"{base}/c.mp4"]
    assert (served["text"] == "a green circle moving right").all() and served["num_frames"].sum() == 24
    assert (meta.loc[meta["source"] == "memory://lists-test/d.png", "media"] == "image").all()
    assert summary.kept == len(meta) and summary.rejected == 2
    # A second look hashes nothing again: local files by mtime, http by its Last-Modified.
    from opensora_core.curation import ingest

    hashed = []
    monkeypatch.setattr(ingest, "sha256_file", lambda storage, rel: hashed.append(rel))
    register_inputs(source, corpus_config(), index=Storage(root / "out"))
    assert hashed == ["memory://lists-test/d.png"]  # the memory store keeps no modification times


def test_a_missing_listed_file_is_read_again_once_it_appears(listed):
    root, listing, _ = listed
    out = Storage(root / "out")
    curate(listing, out, corpus_config())
    gone = next(f for f in register_inputs(open_source(listing), corpus_config()) if f.path.endswith("gone.mp4"))
    assert gone.problem == "not found" and read_manifest(out, gone.key, "raw")["retry"] is True
    _video(root / "local" / "gone.mp4", "red", "down", 5)
    curate(listing, out, corpus_config())
    meta, rejected = pd.read_csv(root / "out" / "meta.csv"), pd.read_csv(root / "out" / "rejected.csv")
    assert str(root / "local" / "gone.mp4") in set(meta["source"])
    assert not rejected["path"].str.endswith("gone.mp4").any()


def test_csv_lists_and_bad_lists(tmp_path):
    video = _video(tmp_path / "v.mp4")
    table = tmp_path / "meta.csv"
    pd.DataFrame({"path": ["v.mp4", str(video)], "text": ["a red circle", "again"]}).to_csv(table, index=False)
    source = open_source(table)
    assert source.entries == [str(video)] and source.duplicates == 1  # relative to the list's folder
    (tmp_path / "no_path.csv").write_text("file,text\nv.mp4,x\n")
    with pytest.raises(ValueError, match=r"needs a 'path' column \(found: file, text\)"):
        open_source(tmp_path / "no_path.csv")
    with pytest.raises(FileNotFoundError, match="no such list of raw files"):
        open_source(tmp_path / "absent.txt")
    (tmp_path / "binary.txt").write_bytes(np.arange(256, dtype=np.uint8).tobytes())
    with pytest.raises(ValueError, match="must be UTF-8 text"):
        open_source(tmp_path / "binary.txt")
    assert isinstance(open_source(tmp_path), Storage)  # a folder is walked as before


def test_cli_curates_a_list_and_names_a_bad_one(tmp_path):
    _video(tmp_path / "v.mp4")
    (tmp_path / "list.txt").write_text("v.mp4\n")
    runner = CliRunner()
    result = runner.invoke(app, ["data", "curate", "--input", str(tmp_path / "list.txt"), "--out",
                                 str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert pd.read_csv(tmp_path / "out" / "meta.csv")["source"].eq(str(tmp_path / "v.mp4")).all()
    result = runner.invoke(app, ["data", "curate", "--input", str(tmp_path / "nope.txt"), "--out",
                                 str(tmp_path / "out")])
    message = " ".join(result.output.split())
    assert result.exit_code == 2 and f"--input: {tmp_path / 'nope.txt'}: no such list of raw files" in message


def test_modification_times_of_every_store():
    import datetime

    from opensora_core.curation.storage import modified_time

    moment = datetime.datetime(2026, 11, 30, 12, 0, tzinfo=datetime.UTC)
    assert modified_time({"mtime": 1.5}) == 1.5  # local
    assert modified_time({"LastModified": moment}) == moment.timestamp()  # s3
    assert modified_time({"updated": "2026-11-30T12:00:00Z"}) == moment.timestamp()  # gcs
    assert modified_time({"Last-Modified": "Mon, 30 Nov 2026 12:00:00 GMT"}) == moment.timestamp()  # http
    assert modified_time({"size": 3}) == 0.0  # none: the file is hashed every time


def test_signed_urls_are_typed_by_their_path_and_have_no_sidecar():
    from opensora_core.curation.captions import read_sidecar
    from opensora_core.curation.ingest import file_suffix, media_kind

    url = "https://host/bucket/clip.MP4?X-Signature=a.b&exp=1#t=3"
    assert file_suffix(url) == ".mp4" and media_kind(url, corpus_config()) == "video"
    assert media_kind("https://host/still.webp", corpus_config()) == "image"

    class Unreachable:
        def exists(self, rel):
            raise AssertionError(f"looked for a sidecar at {rel}")

    assert read_sidecar(Unreachable(), url) is None


def test_a_store_error_is_recorded_and_retried_and_a_probe_bug_raised(tmp_path, monkeypatch):
    from opensora_core.curation import raw_videos as raw_step

    _video(tmp_path / "v.mp4")
    (tmp_path / "list.txt").write_text("v.mp4\n")
    out = Storage(tmp_path / "out")

    @contextlib.contextmanager
    def unreachable(self, rel):
        raise ConnectionError("host unreachable")
        yield

    monkeypatch.setattr(FileList, "local_copy", unreachable)
    curate(tmp_path / "list.txt", out, corpus_config())
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert rejected["reason"].tolist() == ["could not be read (ConnectionError: host unreachable)"]
    monkeypatch.undo()
    curate(tmp_path / "list.txt", out, corpus_config())  # read again: kept now
    assert len(pd.read_csv(tmp_path / "out" / "meta.csv")) == 1
    assert pd.read_csv(tmp_path / "out" / "rejected.csv").empty

    def broken_probe(local, raw):
        raise KeyError("a bug in the probe")

    monkeypatch.setattr(raw_step, "probe_file", broken_probe)
    raw = register_inputs(open_source(tmp_path / "list.txt"), corpus_config())[0]
    with pytest.raises(KeyError, match="a bug in the probe"):
        raw_step.raw_videos(open_source(tmp_path / "list.txt"), out, raw, corpus_config())


def test_a_remote_file_is_fetched_once_for_its_probe_and_its_cut(tmp_path, monkeypatch):
    from opensora_core.curation import storage

    video = _video(tmp_path / "v.mp4")
    memory = fsspec.filesystem("memory")
    memory.pipe("/fetch-test/v.mp4", video.read_bytes())
    (tmp_path / "list.txt").write_text("memory://fetch-test/v.mp4\n")
    fetched, download = [], storage._download

    def counting(fs, path, suffix):
        fetched.append(path)
        return download(fs, path, suffix)

    monkeypatch.setattr(storage, "_download", counting)
    try:
        curate(tmp_path / "list.txt", tmp_path / "out", corpus_config())
    finally:
        memory.rm("/fetch-test", recursive=True)
    assert fetched == ["/fetch-test/v.mp4"]  # probe and cut share one download
    assert len(pd.read_csv(tmp_path / "out" / "meta.csv")) == 1


def test_local_names_with_fsspec_chaining_characters_are_paths(tmp_path):
    """`::` chains filesystems in an fsspec URL; in a local name it is just characters."""
    folder = tmp_path / "a::b"
    folder.mkdir()
    _video(folder / "x::y.mp4")
    (tmp_path / "list.txt").write_text(f"{folder / 'x::y.mp4'}\n")
    for source in (FileList(tmp_path / "list.txt"), Storage(folder)):
        summary = curate(source, tmp_path / f"out-{type(source).__name__}", corpus_config(min_flow=None))
        assert summary.kept == 1 and summary.rejected == 0
