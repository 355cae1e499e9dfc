"""Curation from and to an s3-compatible store: a moto S3 server on 127.0.0.1 stands in
for MinIO or AWS, reached through s3fs with a configured endpoint."""

from __future__ import annotations

import fsspec
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from opensora_core.cli import app
from opensora_core.curation import ingest
from opensora_core.curation.runner import curate
from opensora_core.curation.storage import FileList, Storage, set_protocol_options
from tests.data.corpus import corpus_config, make_corpus
from tests.s3_server import running_s3_server

KEEP = ("red left.mp4", "two_scenes.mp4", "empty.mp4")


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("s3fs", reason="the s3 extra (s3fs) is not installed")
    with running_s3_server() as endpoint:
        yield endpoint


@pytest.fixture
def bucket(s3_endpoint, tmp_path, monkeypatch):
    """A bucket holding three raw files and a sidecar caption under `videos/`."""
    import s3fs

    for name, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"),
                        ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(name, value)
    name = f"raw-{tmp_path.name.lower().replace('_', '-')[-40:]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, skip_instance_cache=True)
    fs.mkdir(name)
    files = make_corpus(tmp_path / "local")
    for file in KEEP:
        fs.put_file(str(files[file]), f"{name}/videos/{file}")
    fs.pipe_file(f"{name}/videos/two_scenes.txt", b"two shots of shapes")
    return fs, name


def test_curate_from_and_to_an_s3_compatible_store(bucket, s3_endpoint, monkeypatch):
    fs, name = bucket
    options = {"endpoint_url": s3_endpoint}
    source, out = Storage(f"s3://{name}/videos", **options), Storage(f"s3://{name}/curated", **options)
    summary = curate(source, out, corpus_config())
    assert (summary.kept, summary.rejected) == (3, 1)
    meta = pd.read_csv(fs.open(f"{name}/curated/meta.csv"))
    assert set(meta["source"]) == {f"s3://{name}/videos/red left.mp4", f"s3://{name}/videos/two_scenes.mp4"}
    assert set(meta.loc[meta["source"].str.endswith("two_scenes.mp4"), "text"]) == {"two shots of shapes"}
    for path in meta["path"]:  # the clips were published into the store
        assert path.startswith(f"s3://{name}/curated/partitions/") and fs.size(path) > 0
    rejected = pd.read_csv(fs.open(f"{name}/curated/rejected.csv"))
    assert rejected["path"].tolist() == [f"s3://{name}/videos/empty.mp4"]
    # A second run reads the store's LastModified: nothing is downloaded to be hashed again.
    hashed = []
    original = ingest.sha256_file
    monkeypatch.setattr(ingest, "sha256_file", lambda *a: hashed.append(a[1]) or original(*a))
    assert curate(source, out, corpus_config()).kept == 3 and hashed == []


def test_the_cli_and_a_list_reach_an_s3_endpoint(bucket, s3_endpoint, tmp_path):
    _, name = bucket
    config = tmp_path / "data.yaml"
    config.write_text(yaml.safe_dump(corpus_config().model_dump(mode="json")))
    saved = dict(fsspec.config.conf.get("s3", {}))
    try:
        result = CliRunner().invoke(app, [
            "data", "curate", "--input", f"s3://{name}/videos", "--out", str(tmp_path / "out"),
            "--config", str(config), "--storage-option", f"s3.endpoint_url={s3_endpoint}", "--no-progress"])
        assert result.exit_code == 0, result.output
        assert len(pd.read_csv(tmp_path / "out" / "meta.csv")) == 3
        # Credentials stay text, even all digits (moto takes any key).
        digits = CliRunner().invoke(app, [
            "data", "curate", "--input", f"s3://{name}/videos", "--out", str(tmp_path / "out-digits"),
            "--config", str(config), "--storage-option", f"s3.endpoint_url={s3_endpoint}",
            "--storage-option", "s3.key=12345678", "--storage-option", "s3.secret=0", "--no-progress"])
        assert digits.exit_code == 0, digits.output
        local = tmp_path / "local-raw"
        local.mkdir()
        for option, message, where in (
                ("endpoint_url", "PROTOCOL.KEY=VALUE", "--storage-option"),
                ("s3.client_kwargs={bad", "not valid JSON", "--storage-option"),
                ("s3.no_such_option=1", "no_such_option", "--input"),
                ("s3.no_such_option=1", "no_such_option", "--out"),  # only the output in the store
                ('s3.config_kwargs={"retries": 3}', "rejected its options", "--input")):
            paths = [str(local), f"s3://{name}/cli-out"] if where == "--out" else \
                [f"s3://{name}/videos", str(tmp_path / "out")]
            fsspec.config.conf["s3"] = dict(saved)  # each case alone
            bad = CliRunner().invoke(app, ["data", "curate", "--input", paths[0], "--out", paths[1],
                                           "--storage-option", option])
            output = " ".join(bad.output.split())
            assert bad.exit_code == 2 and message in output and f"{where}:" in output, (option, where, bad.output)
    finally:
        fsspec.config.conf["s3"] = saved
    # A local list naming s3 entries: the endpoint from fsspec's per-protocol settings.
    listing = tmp_path / "inputs.txt"
    listing.write_text(f"s3://{name}/videos/red left.mp4\ns3://{name}/videos/missing.mp4\n")
    try:
        set_protocol_options([f"s3.endpoint_url={s3_endpoint}"])
        summary = curate(FileList(listing), tmp_path / "listed", corpus_config())
    finally:
        fsspec.config.conf["s3"] = saved
    rejected = pd.read_csv(tmp_path / "listed" / "rejected.csv")
    assert summary.kept == 1 and rejected[["path", "reason"]].values.tolist() == [
        [f"s3://{name}/videos/missing.mp4", "not found"]]


def test_a_store_without_its_package_names_the_extra(monkeypatch):
    def no_package(protocol):
        raise ImportError(f"Install s3fs to access {protocol}")

    monkeypatch.setattr(fsspec.core, "get_filesystem_class", no_package)
    with pytest.raises(ValueError, match=r"s3://bucket/raw: Install s3fs .*opensora-mlops\[s3\]"):
        Storage("s3://bucket/raw")


def test_a_caption_table_in_the_store_edited_in_place_captions_again(bucket, s3_endpoint, tmp_path):
    fs, name = bucket
    # Beside the videos: the listing of the raw folder holds it too, in another shape than a
    # HEAD gives, and goes stale; the stamp asks afresh.
    table = f"s3://{name}/videos/captions.csv"
    fs.pipe_file(f"{name}/videos/captions.csv", b"path,text\nred left.mp4,a red shape\n")

    def config():
        settings = corpus_config().model_dump(mode="json")
        settings["scorers"]["captions"] = {"sidecar": False, "import_csv": table}
        return type(corpus_config()).model_validate(settings)

    def texts(out):
        meta = pd.read_csv(out / "meta.csv")
        return set(meta.loc[meta["source"].str.endswith("red left.mp4"), "text"])

    saved = dict(fsspec.config.conf.get("s3", {}))
    try:
        set_protocol_options([f"s3.endpoint_url={s3_endpoint}"])
        source, out = Storage(f"s3://{name}/videos"), tmp_path / "out"
        curate(source, out, config())
        assert texts(out) == {"a red shape"}
        manifests = sorted(out.glob("partitions/*/scored_clips.json"))
        before = {m: m.stat().st_mtime_ns for m in manifests}
        curate(source, out, config())  # the table unchanged: nothing scored again
        assert {m: m.stat().st_mtime_ns for m in manifests} == before
        fs.pipe_file(f"{name}/videos/captions.csv", b"path,text\nred left.mp4,a scarlet shape\n")
        curate(source, out, config())
        assert texts(out) == {"a scarlet shape"}
    finally:
        fsspec.config.conf["s3"] = saved
