"""The training image: `pip install .[train]` must be enough to run a stage.

A fresh interpreter refuses every module that only another extra installs (Dagster
itself, TorchX, OpenCV and the curation tools, the full MLflow server's SQL stores,
plotting), then runs the process torchrun starts for one step of a tiny stage. What that
run imported must lie within what pyproject declares for the base set plus `train`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

from opensora_core.train.args import train_argv
from opensora_core.train.loop import TrainArgs

REPO = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

# Top-level modules only the other extras bring: orchestration, ui, curation, eval,
# tracking (the full mlflow), k8s, s3, ocr.
NOT_IN_TRAIN = ["dagster", "dagster_webserver", "dagster_graphql", "dagster_k8s", "torchx", "cv2", "scenedetect",
                "pytesseract", "tesserocr", "matplotlib", "tabulate", "aiohttp", "s3fs", "kubernetes", "flask",
                "gunicorn", "graphene", "sqlalchemy", "alembic", "sklearn", "scipy", "docker", "gradio"]

# Imported when present by libraries that declare them nowhere (anyio probes sniffio; a
# JSON fast path tries orjson): the shared environment has them, a training image need not.
UNDECLARED_OPTIONAL = {"sniffio", "orjson"}

# `None` in sys.modules is how Python spells "not installed": `import x` raises
# ModuleNotFoundError and `importlib.util.find_spec("x")` (optional-dependency probes, as
# torch's) answers None, as in an image without x.
_RUN = """
import atexit, json, runpy, sys
for name in json.loads(sys.argv[1]):
    sys.modules[name] = None
report = sys.argv[2]
atexit.register(lambda: open(report, "w").write(json.dumps(
    sorted({n.split(".")[0] for n, m in list(sys.modules.items()) if m is not None}))))
sys.argv = ["train_entry", *sys.argv[3:]]
runpy.run_module("orchestration.launch.train_entry", run_name="__main__")
"""


def _name(requirement: str) -> str:
    return re.sub(r"[-_.]+", "-", Requirement(requirement).name).lower()


def _applies(requirement: Requirement, extra: str = "") -> bool:
    return requirement.marker is None or requirement.marker.evaluate({"extra": extra})


def _declared(extras: tuple[str, ...]) -> tuple[set[str], set[str]]:
    """Distributions the base set plus `extras` install (pyproject's names, then what each
    installed one requires, transitively), and those their own extras name: optional
    packages a library imports when present (urllib3's brotli, pandas' pytz)."""
    todo = [Requirement(r) for r in PYPROJECT["dependencies"]]
    for extra in extras:
        todo += [Requirement(r) for r in PYPROJECT["optional-dependencies"][extra]]
    installed, optional = set(), set()
    while todo:
        requirement = todo.pop()
        name = _name(str(requirement))
        if name in installed or not _applies(requirement):
            continue
        installed.add(name)
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        wanted = [Requirement(r) for r in dist.requires or []]
        todo += [r for r in wanted if _applies(r)]
        optional |= {_name(str(r)) for r in wanted
                     for extra in dist.metadata.get_all("Provides-Extra") or [] if _applies(r, extra)}
    return installed, optional - installed


def test_a_stage_trains_with_only_the_train_extra(tmp_path, training_table, test_profile):
    report = tmp_path / "imported.json"
    out = tmp_path / "stage"
    argv = train_argv(TrainArgs(stage="tiny/stage1", data=str(training_table), out=str(out),
                                profile=str(test_profile), max_steps=1, ckpt_every=1))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _RUN, json.dumps(NOT_IN_TRAIN), str(report), *argv], env=env,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-6000:]
    assert (out / "export" / "model.safetensors").is_file()
    # The profile's SQLite store needs the full MLflow (`tracking`): the stage kept its offline record.
    assert (out / "mlflow_offline" / "record.jsonl").is_file()

    imported = json.loads(report.read_text())
    assert not set(imported) & set(NOT_IN_TRAIN)
    installed, optional = _declared(("train",))
    known = installed | optional | {"opensora-mlops"} | UNDECLARED_OPTIONAL
    providers = metadata.packages_distributions()
    undeclared = {module: providers[module] for module in imported if module in providers
                  and not {_name(d) for d in providers[module]} & known}
    assert not undeclared, f"imported by training but not installed by .[train]: {undeclared}"


def test_the_train_extra_holds_none_of_the_other_extras_top_level_packages():
    declared, _ = _declared(("train",))
    for name in ("dagster", "dagster-webserver", "torchx", "opencv-python", "scenedetect", "mlflow", "matplotlib"):
        assert name not in declared, name
    assert {"mlflow-skinny", "dagster-pipes", "torch", "av"} <= declared
