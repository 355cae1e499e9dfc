from __future__ import annotations

import inspect
import io
import json
import sys
import typing

import pytest
from dagster import (
    DagsterInstance,
    PipesEnvContextInjector,
    PipesTempFileMessageReader,
    asset,
    materialize,
    open_pipes_session,
)
from dagster_pipes import PipesContext
from torchx import specs
from torchx.specs.file_linter import get_fn_docstring, validate

from opensora_core.train import loop
from opensora_core.train.args import TrainArgs, parse_train_args, train_argv, train_flags
from orchestration.launch import components, train_entry
from orchestration.launch.components import ENTRY_MODULE, train_stage_component
from orchestration.resources import TorchXLauncher, TorchXLaunchError

STAGE = {"stage": "tiny/stage1", "profile": "embedded", "data": "/data/meta.parquet", "out": "/runs/stage1"}


# The component's own parameters; every other one is a declared `TrainArgs` field.
JOB_PARAMETERS = ["nnodes", "nproc_per_node", "image", "python", "cpu", "gpu", "memMB", "env", "mounts",
                  "max_retries"]


def _same_type(annotation, flag) -> bool:
    """`Optional[int]` (what TorchX reads) is the declaration's `int | None`."""
    args = typing.get_args(annotation)
    if flag.optional:
        return typing.get_origin(annotation) is typing.Union and set(args) == {flag.type, type(None)}
    return annotation is flag.type


def test_component_parameters_are_exactly_the_declared_fields():
    params = inspect.signature(train_stage_component).parameters
    declared = train_flags()
    assert list(params)[: len(declared)] == [flag.name for flag in declared]
    assert list(params)[len(declared):] == JOB_PARAMETERS
    _, helps = get_fn_docstring(train_stage_component)
    for flag in declared:
        param = params[flag.name]
        assert _same_type(param.annotation, flag), (flag.name, param.annotation)
        # `profile` alone is required here: a job names the machines it runs on.
        if flag.required or flag.name == "profile":
            assert param.default is inspect.Parameter.empty, flag.name
        else:
            assert param.default == flag.default, flag.name
        assert helps[flag.name] == flag.info.help  # what `torchx run ... --help` shows


def _program(app) -> list[str]:
    args = app.roles[0].args
    return args[args.index(ENTRY_MODULE) + 1:]


def test_component_passes_every_declared_field_to_the_entry():
    values = {**STAGE, "cache": "/caches", "init": "/runs/stage0/export/model.safetensors", "max_steps": 2,
              "ckpt_every": 1, "seed": 3, "keep_last": 5, "parent_run_id": "abc", "lr": 2.5e-5}
    assert set(values) == {flag.name for flag in train_flags()}  # a new field belongs in this test
    program = _program(train_stage_component(**values))
    assert program[program.index("--lr") + 1] == "2.5e-05" and program[program.index("--keep-last") + 1] == "5"
    assert parse_train_args(program) == TrainArgs(**values)
    assert parse_train_args(_program(train_stage_component(**STAGE))) == TrainArgs(**STAGE)


def test_single_node_runs_torchrun_standalone():
    role = train_stage_component(**STAGE, nproc_per_node=2, env={"A": "1"}, max_retries=1).roles[0]
    assert role.entrypoint == "python" and role.num_replicas == 1 and role.max_retries == 1
    assert role.args[:6] == ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2"]
    assert role.args[6:9] == ["--standalone", "-m", ENTRY_MODULE] and role.env == {"A": "1"}


def test_component_passes_the_torchx_cli_linter():
    assert validate(components.__file__, "train_stage_component") == []


def _dryrun(scheduler, cfg, **kwargs):
    launcher = TorchXLauncher(scheduler=scheduler, scheduler_cfg=cfg, log_dir="/unused")
    return str(launcher.dryrun(train_stage_component(**STAGE, **kwargs)))


def test_slurm_appdefs_pass_torchx_dryrun():
    single = _dryrun("slurm", {"partition": "gpu", "time": "2:00:00"}, gpu=8, nproc_per_node=8)
    assert "--partition=gpu" in single and "--gpus-per-task=8" in single
    assert "--standalone -m orchestration.launch.train_entry --stage tiny/stage1" in single
    multi = _dryrun("slurm", {"partition": "gpu"}, nnodes=4, nproc_per_node=8, gpu=8)
    assert multi.count("#SBATCH --job-name=trainer-") == 4
    assert '--rdzv-endpoint "${SLURM_JOB_NODELIST_HET_GROUP_0:-localhost}:29500"' in multi


def test_kubernetes_appdefs_pass_torchx_dryrun():
    pytest.importorskip("kubernetes", reason="TorchX's kubernetes scheduler needs the kubernetes client")
    request = _dryrun("kubernetes", {"queue": "default", "namespace": "ml"}, nnodes=2, nproc_per_node=8, gpu=8,
                      image="registry.example/opensora:1", mounts=["type=volume,src=opensora-data,dst=/data"],
                      env={"DAGSTER_PIPES_CONTEXT": "x"}, max_retries=2)
    assert "kind: Job" in request and "queue: default" in request and "maxRetry: 2" in request
    assert "nvidia.com/gpu: '8'" in request and "image: registry.example/opensora:1" in request
    assert "claimName: opensora-data" in request and "name: DAGSTER_PIPES_CONTEXT" in request
    assert "--rdzv-endpoint \"${TORCHX_RANK0_HOST:-localhost}:29500\"" in request.replace("\n            ", " ")


def _python_app(name, code):
    role = specs.Role(name="worker", image="unused", entrypoint=sys.executable, args=["-c", code])
    return specs.AppDef(name=name, roles=[role])


def test_local_cwd_launch_runs_the_job(tmp_path):
    launcher = TorchXLauncher(log_dir=str(tmp_path / "logs"), wait_interval_s=0.2)
    marker = tmp_path / "done.txt"
    # The job imports this checkout's code (PYTHONPATH), whatever the working directory.
    code = (f"import orchestration.launch.components, pathlib; pathlib.Path({str(marker)!r}).write_text('ok'); "
            "print('hello from the job')")
    stream = io.StringIO()
    handle = launcher.launch(_python_app("probe-ok", code), stream=stream)
    assert handle.startswith("local_cwd://") and marker.read_text() == "ok"
    assert "hello from the job" in stream.getvalue()


def test_failed_local_cwd_launch_raises_with_the_log_tail(tmp_path):
    launcher = TorchXLauncher(log_dir=str(tmp_path / "logs"), wait_interval_s=0.2)
    code = "import sys; print('loading shard 3'); sys.exit('rank 0 crashed: CUDA out of memory (simulated)')"
    with pytest.raises(TorchXLaunchError) as caught:
        launcher.launch(_python_app("probe-fail", code), follow=False)
    text = caught.value.description
    assert "ended FAILED" in text and "worker replica 0" in text
    assert "loading shard 3" in text and "rank 0 crashed: CUDA out of memory (simulated)" in text


def _fake_train_stage(calls):
    def train_stage(args, on_metrics=None):
        calls.append((args, on_metrics))
        for step, loss in [(1, 1.0), (2, 0.75)]:
            if on_metrics is not None:
                on_metrics(step, {"loss": loss, "lr": 1e-3})
        return loop.TrainResult(steps=2, final_loss=0.75, tokens_per_second=123.0, wall_seconds=4.5,
                                export_path="/runs/stage1/export/model.safetensors",
                                dcp_dir="/runs/stage1/checkpoints/step_2", mlflow_run_id="r1",
                                mlflow_run_url="http://127.0.0.1:5000/#/experiments/1/runs/r1",
                                loss_curve=[(1, 1.0), (2, 0.75)])

    return train_stage


def test_train_entry_reports_through_dagster_pipes(monkeypatch):
    calls = []
    monkeypatch.setattr(loop, "train_stage", _fake_train_stage(calls))
    monkeypatch.setattr(PipesContext, "_instance", None)  # open_dagster_pipes keeps one per process
    monkeypatch.delenv("RANK", raising=False)

    @asset
    def stage_probe(context):
        with (open_pipes_session(context=context, context_injector=PipesEnvContextInjector(),
                                 message_reader=PipesTempFileMessageReader()) as session,
              monkeypatch.context() as env):
            for key, value in session.get_bootstrap_env_vars().items():
                env.setenv(key, value)
            train_entry.main(train_argv(TrainArgs(**STAGE)))
        yield from session.get_results(metadata={"custom_messages": json.dumps(session.get_custom_messages())})

    instance = DagsterInstance.ephemeral()
    result = materialize([stage_probe], instance=instance)
    metadata = result.asset_materializations_for_node("stage_probe")[0].metadata
    assert metadata["final_loss"].value == 0.75 and metadata["steps"].value == 2
    assert metadata["tokens_per_second"].value == 123.0 and metadata["wall_seconds"].value == 4.5
    assert metadata["checkpoint"].value == "/runs/stage1/export/model.safetensors"
    assert metadata["mlflow_run"].value.endswith("/runs/r1")
    assert json.loads(metadata["custom_messages"].value) == [
        {"step": 1, "metrics": {"loss": 1.0, "lr": 1e-3}}, {"step": 2, "metrics": {"loss": 0.75, "lr": 1e-3}}]
    logs = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("step 2: loss=0.75" in m for m in logs)
    assert calls[0][0] == TrainArgs(**STAGE) and calls[0][1] is not None


def test_train_entry_without_dagster_is_a_plain_run(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(loop, "train_stage", _fake_train_stage(calls))
    monkeypatch.delenv("DAGSTER_PIPES_CONTEXT", raising=False)
    train_entry.main(train_argv(TrainArgs(**STAGE, max_steps=2)))
    assert calls[0][1] is None and calls[0][0].max_steps == 2
    assert json.loads(capsys.readouterr().out)["final_loss"] == 0.75
