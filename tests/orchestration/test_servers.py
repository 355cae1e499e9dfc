"""Real servers on 127.0.0.1: `dagster dev` queried over GraphQL, and `mlflow server`
that a training stage logs to over HTTP. Each is started, used, stopped by its PID and
checked to be gone (port closed, no process of it left).

Both start the way the dev guide asks for (`set -m`): in a process group of their own,
with SIGINT at its default. `dagster dev` maps SIGTERM to its SIGINT handler, so a server
that inherits an ignored SIGINT (a background job of a shell without job control; pytest
itself run that way) would ignore SIGTERM as well. They are stopped with SIGTERM to their
process group, never by name; whatever is left after a failure gets SIGKILL the same way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from dagster import DagsterInstance, materialize
from mlflow.tracking import MlflowClient

from assets_defs.curation import raw_partitions, raw_videos
from opensora_core.curation.ingest import register_inputs
from opensora_core.data.synthetic import moving_square_clip
from opensora_core.data.video_io import write_video
from opensora_core.tracking import EXPERIMENT, RECORD_FILE, TrackingUnavailable
from opensora_core.train.loop import TrainArgs, train_stage
from orchestration.resources import CurationStorage
from tests.train import conftest as train_fixtures

training_table = train_fixtures.training_table  # the fixture of tests/train: 8 clips and 2 stills

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # the virtualenv's bin/: dagster, mlflow
START_TIMEOUT_S = 150  # dagster dev imports torch in three processes; slow on 2 cores
STOP_TIMEOUT_S = 60

LINEAGE = {  # asset -> the assets it must depend on (others may be added)
    "raw_videos": set(),
    "scene_clips": {"raw_videos"},
    "scored_clips": {"scene_clips"},
    "training_dataset": {"scored_clips"},
    "text_embeddings": {"training_dataset"},
    "video_latents": {"training_dataset"},
    "stdit2_stage0": {"text_embeddings", "video_latents"},
    **{f"stdit2_stage{i}": {"text_embeddings", "video_latents", f"stdit2_stage{i - 1}"}
       for i in range(1, 4)},
}

ASSET_NODES = "{ assetNodes { assetKey { path } dependencyKeys { path } } }"
LATEST_MATERIALIZATION = """
query Latest($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    __typename
    ... on Asset {
      assetMaterializations(limit: 1) {
        partition
        runId
        metadataEntries {
          __typename
          label
          ... on TextMetadataEntry { text }
          ... on IntMetadataEntry { intRepr }
          ... on FloatMetadataEntry { floatValue }
          ... on PathMetadataEntry { path }
        }
      }
    }
  }
}
"""


# -- processes ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listens_on(proc: subprocess.Popen, port: int) -> bool:
    """Whether `proc` or a process it started listens on `port` (not just anyone)."""
    try:
        tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        return False
    for member in tree:
        with contextlib.suppress(psutil.Error):
            listing = getattr(member, "net_connections", None) or member.connections  # psutil < 6
            if any(c.status == psutil.CONN_LISTEN and c.laddr.port == port for c in listing("inet")):
                return True
    return False


PORT_TAKEN = re.compile(r"address already in use|errno 98|port \d+ is in use", re.IGNORECASE)


@contextlib.contextmanager
def _server_on_a_free_port(make_argv: Callable[[int], list[str]], env: dict[str, str],
                           log: Path) -> Iterator[tuple[subprocess.Popen, int]]:
    """`_server` on a port the OS just gave out. Another process may take that port
    before the server binds it: a server that then exits saying so is started again on
    another port, so the race costs a retry, never the test."""
    for _ in range(3):
        port = _free_port()
        with _server(make_argv(port), env, log) as proc:
            deadline = time.monotonic() + START_TIMEOUT_S
            while proc.poll() is None and not _listens_on(proc, port) and time.monotonic() < deadline:
                time.sleep(0.5)
            if proc.poll() is not None and PORT_TAKEN.search(_tail(log)):
                continue
            if proc.poll() is not None:
                pytest.fail(f"{proc.args[:2]} exited ({proc.returncode}) before listening; log:\n{_tail(log)}")
            if not _listens_on(proc, port):
                pytest.fail(f"{proc.args[:2]} not listening on {port} within {START_TIMEOUT_S} s; log:\n{_tail(log)}")
            yield proc, port
            return
    pytest.fail(f"three ports in a row were taken before {make_argv(0)[:2]} could bind them")


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


# Runs `argv[1:]` in place of itself (same PID) with SIGINT back at its default: an
# ignored signal stays ignored across exec, and preexec_fn is unsafe with threads.
_SIGINT_DEFAULT_EXEC = ("import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
                        "os.execv(sys.argv[1], sys.argv[1:])")


def _alive(procs: list[psutil.Process]) -> list[psutil.Process]:
    """Those still running; a zombie has exited (an orphan may wait for a reaper)."""
    left = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(proc)
        except psutil.NoSuchProcess:
            pass
    return left


def _group(pgid: int) -> list[psutil.Process]:
    """Live processes of process group `pgid`, found by group id (never by name)."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid:
                members.append(proc)
        except (ProcessLookupError, psutil.Error):
            pass
    return _alive(members)


def _tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:] if log.exists() else "(no log)"


@contextlib.contextmanager
def _server(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """Start `argv` as the leader of a new process group; on the way out, SIGKILL
    whatever of that group (or of the tree it started) is still running."""
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", _SIGINT_DEFAULT_EXEC, *argv], cwd=REPO, env=env,
                                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    seen: list[psutil.Process] = []
    try:
        yield proc
    finally:
        with contextlib.suppress(psutil.Error):
            seen = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        for leftover in _alive(seen):
            with contextlib.suppress(psutil.Error):
                leftover.kill()
        proc.wait(timeout=30)


def _stop(proc: subprocess.Popen, port: int, log: Path) -> float:
    """SIGTERM to the server's process group, by its PID; return the seconds it took
    until the leader, every process it started and the port are gone."""
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    started = time.monotonic()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{proc.args[:2]} ignored SIGTERM for {STOP_TIMEOUT_S} s; log:\n{_tail(log)}")
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while (_alive(tree) or _group(proc.pid) or _listening(port)) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = {p.pid: _cmdline(p) for p in _alive(tree) + _group(proc.pid)}
    assert not left, f"processes left after stopping {proc.args[:2]}: {left}"
    assert not _listening(port), f"port {port} still open after stopping {proc.args[:2]}"
    return time.monotonic() - started


def _cmdline(proc: psutil.Process) -> str:
    try:
        return " ".join(proc.cmdline())[:200]
    except psutil.Error:
        return "?"


def _wait_for(what: str, probe: Callable[[], object], proc: subprocess.Popen, log: Path):
    """Call `probe` until it returns something truthy; fail when the server exits or
    does not get there in START_TIMEOUT_S."""
    deadline = time.monotonic() + START_TIMEOUT_S
    last: object = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{proc.args[:2]} exited ({proc.returncode}) before {what}; log:\n{_tail(log)}")
        try:
            value = probe()
        except (OSError, ValueError) as err:  # refused, reset, timed out, not JSON yet
            value, last = None, err
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"no {what} within {START_TIMEOUT_S} s (last: {last!r}); log:\n{_tail(log)}")


def _graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    if payload.get("errors"):
        raise ValueError(f"GraphQL errors: {payload['errors']}")
    return payload["data"]


def _profile(tmp_path: Path, base: Path, **overrides) -> Path:
    """`base` (the test profile) with its data and artifacts roots in `tmp_path`."""
    data = yaml.safe_load(base.read_text())
    data.update(data_root=str(tmp_path / "data"), artifacts_root=str(tmp_path / "artifacts"),
                **overrides)
    path = tmp_path / "server_profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENSORA_", "DAGSTER_", "MLFLOW_"))}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    return {**env, "DAGSTER_DISABLE_TELEMETRY": "1", "MLFLOW_DISABLE_TELEMETRY": "true", **values}


# -- dagster dev ----------------------------------------------------------------------


def _metadata_value(entry: dict):
    for field in ("text", "intRepr", "floatValue", "path"):
        if field in entry:
            return entry[field]
    return entry["__typename"]


def test_dagster_dev_serves_the_asset_graph_and_latest_materialization(tmp_path, test_profile):
    home, raw, curated = tmp_path / "dagster_home", tmp_path / "raw", tmp_path / "curated"
    home.mkdir()
    raw.mkdir()
    write_video(raw / "red square.mp4", moving_square_clip(24, 64, 64, color="red", direction="left"), fps=8)
    profile = _profile(tmp_path, test_profile)
    env = _env(DAGSTER_HOME=str(home), OPENSORA_PROFILE=str(profile), OPENSORA_RAW_ROOT=str(raw),
               OPENSORA_CURATED_ROOT=str(curated), OPENSORA_CACHE_ROOT=str(tmp_path / "caches"),
               OPENSORA_TRAIN_ROOT=str(tmp_path / "train"))

    # A materialization with metadata in the instance the server will use. The partition
    # is registered first, so the server's raw_videos sensor finds nothing new to run.
    storage = CurationStorage(raw_root=str(raw), curated_root=str(curated))
    [raw_file] = register_inputs(storage.source(), storage.curation_config(), index=storage.out())
    with DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(raw_partitions.name, [raw_file.key])
        result = materialize([raw_videos], partition_key=raw_file.key, instance=instance,
                             resources={"curation_storage": storage})
    assert result.success
    expected = result.asset_materializations_for_node("raw_videos")[0].metadata
    assert expected["sha256"].value == raw_file.sha256 and expected["rejected"].value == "no"

    log = tmp_path / "dagster_dev.log"

    def argv(port: int) -> list[str]:
        return [str(BIN / "dagster"), "dev", "-m", "orchestration.definitions", "--host", "127.0.0.1",
                "--port", str(port)]

    started = time.monotonic()
    with _server_on_a_free_port(argv, env, log) as (proc, port):
        url = f"http://127.0.0.1:{port}/graphql"

        def asset_graph():
            nodes = _graphql(url, ASSET_NODES)["assetNodes"]
            return {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]}
                    for n in nodes}

        graph = _wait_for("the asset graph over GraphQL", asset_graph, proc, log)
        up_s = time.monotonic() - started
        for asset, deps in LINEAGE.items():
            assert asset in graph, f"{asset} missing from the served graph {sorted(graph)}"
            assert deps <= graph[asset], f"{asset} depends on {graph[asset]}, expected at least {deps}"
        assert graph["raw_videos"] == set()
        if "eval_samples" in graph:
            assert any(d.startswith("stdit2_stage") for d in graph["eval_samples"]), graph["eval_samples"]

        data = _graphql(url, LATEST_MATERIALIZATION, {"key": {"path": ["raw_videos"]}})["assetOrError"]
        assert data["__typename"] == "Asset", data
        [latest] = data["assetMaterializations"]
        assert latest["partition"] == raw_file.key and latest["runId"] == result.run_id
        served = {e["label"]: _metadata_value(e) for e in latest["metadataEntries"]}
        assert set(served) == set(expected)
        assert served["sha256"] == raw_file.sha256 and served["kind"] == expected["kind"].value
        assert served["path"] == expected["path"].value and served["size"] == "64x64"
        assert int(served["num_frames"]) == expected["num_frames"].value
        assert served["fps"] == pytest.approx(expected["fps"].value)

        # The running daemon did not launch anything for the known partition.
        with DagsterInstance.from_config(str(home)) as instance:
            assert [r.run_id for r in instance.get_runs()] == [result.run_id]

        stop_s = _stop(proc, port, log)
        assert proc.returncode == 0, f"dagster dev did not shut down cleanly; log:\n{_tail(log)}"
    print(f"dagster dev: up in {up_s:.1f} s, stopped in {stop_s:.1f} s")


# -- mlflow server --------------------------------------------------------------------


def _health(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
        return response.status == 200


def _artifact_files(client: MlflowClient, run_id: str, path: str | None = None) -> dict[str, int]:
    """Every file artifact of the run, recursively: path -> size."""
    files = {}
    for info in client.list_artifacts(run_id, path):
        files.update(_artifact_files(client, run_id, info.path) if info.is_dir else {info.path: info.file_size})
    return files


def test_training_stage_logs_to_a_real_mlflow_server(tmp_path, test_profile, training_table,
                                                     monkeypatch):
    # The limits the tracker sets for HTTP stores, set here so they are undone after the test.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
    log, artifacts = tmp_path / "mlflow_server.log", tmp_path / "mlflow_artifacts"

    def argv(port: int) -> list[str]:
        return [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                "--artifacts-destination", str(artifacts)]

    out = tmp_path / "stage1"
    started = time.monotonic()
    with _server_on_a_free_port(argv, _env(), log) as (proc, port):
        uri = f"http://127.0.0.1:{port}"
        profile = _profile(tmp_path, test_profile, mlflow_tracking_uri=uri, mlflow_required=True)
        _wait_for("an answer on /health", lambda: _health(uri), proc, log)
        up_s = time.monotonic() - started
        trained = time.monotonic()
        result = train_stage(TrainArgs(stage="tiny/stage1", data=str(training_table), out=str(out),
                                       profile=str(profile), max_steps=2, ckpt_every=2))
        train_s = time.monotonic() - trained
        events = [json.loads(line)["event"] for line in (out / "mlflow_offline" / RECORD_FILE).open()]
        assert "offline" not in events, "the tracker fell back to its local record"
        assert result.mlflow_run_id and result.mlflow_run_url.startswith(f"{uri}/#/experiments/")

        client = MlflowClient(tracking_uri=uri)
        experiment = client.get_experiment_by_name(EXPERIMENT)
        assert experiment is not None
        runs = client.search_runs([experiment.experiment_id])
        assert [r.info.run_id for r in runs] == [result.mlflow_run_id]
        run = client.get_run(result.mlflow_run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == "stage1"
        assert run.data.tags["stage"] == "1" and run.data.tags["dcp_dir"].startswith("file://")
        assert run.data.params["max_steps"] == "2" and run.data.params["profile"] == "embedded"
        assert run.data.params["data"] == str(training_table) and "stage.lr" in run.data.params
        history = client.get_metric_history(result.mlflow_run_id, "loss")
        assert [(m.step, m.value) for m in history] == [(s, pytest.approx(v)) for s, v in result.loss_curve]
        assert {"grad_norm", "lr", "tokens_per_s"} <= set(run.data.metrics)

        export = Path(result.export_path)
        listed = _artifact_files(client, result.mlflow_run_id)
        # The export's weights, alone at the top or with the rest of export/ under export/.
        weights = [p for p in listed if p in ("model.safetensors", "export/model.safetensors")]
        assert len(weights) == 1, f"no exported weights among the run's artifacts {sorted(listed)}"
        assert listed[weights[0]] == export.stat().st_size
        # Uploaded through the server (--serve-artifacts) into its artifacts destination.
        stored = list(artifacts.rglob("model.safetensors"))
        assert len(stored) == 1 and stored[0].read_bytes() == export.read_bytes()

        stop_s = _stop(proc, port, log)
        assert proc.returncode == 0, f"mlflow server did not shut down cleanly; log:\n{_tail(log)}"
    print(f"mlflow server: up in {up_s:.1f} s, training {train_s:.1f} s, stopped in {stop_s:.1f} s")


def test_required_tracking_without_a_server_fails_before_training(tmp_path, test_profile,
                                                                  training_table, monkeypatch):
    opened, urlopen = [], urllib.request.urlopen

    def spy(url, *args, **kwargs):
        opened.append(url)
        return urlopen(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", spy)
    out = tmp_path / "stage1"
    # Bound, not listening: refused, and no other process can take the port meanwhile.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        profile = _profile(tmp_path, test_profile, mlflow_tracking_uri=uri, mlflow_required=True)
        with pytest.raises(TrackingUnavailable, match=re.escape(uri)):
            train_stage(TrainArgs(stage="tiny/stage1", data=str(training_table), out=str(out),
                                  profile=str(profile), max_steps=2, ckpt_every=1))
    assert opened == [f"{uri}/health"]  # one probe, no retries to wait through
    assert not (out / "metrics.jsonl").exists() and not (out / "export").exists()
    assert not any((out / "checkpoints").glob("step-*"))
