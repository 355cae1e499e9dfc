"""The declared dependencies: what the code imports is declared, with floors it works at."""

import re
import tomllib
from pathlib import Path

PYPROJECT = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
# The base set and every extra's (an extra naming the project itself adds nothing new).
DEPENDENCIES = {re.split(r"[<>=!~\[; ]", spec, maxsplit=1)[0].lower(): spec
                for specs in [PYPROJECT["project"]["dependencies"],
                              *PYPROJECT["project"]["optional-dependencies"].values()]
                for spec in specs if not spec.startswith(PYPROJECT["project"]["name"])}


def _floor(name: str) -> tuple[int, ...]:
    match = re.search(r">=\s*([0-9.]+)", DEPENDENCIES[name])
    assert match, f"{name} has no floor: {DEPENDENCIES[name]}"
    return tuple(int(part) for part in match.group(1).split("."))


def test_pillow_is_declared():
    assert "pillow" in DEPENDENCIES


def test_dagster_floors_allow_asset_pools():
    for name in ("dagster", "dagster-webserver", "dagster-pipes"):
        assert _floor(name) >= (1, 9, 12), DEPENDENCIES[name]


def test_make_setup_installs_every_extra_but_gpu():
    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    assert 'pip install --quiet -e ".[$(EXTRAS)]"' in makefile
    installed = set(re.search(r"^EXTRAS := (.+)$", makefile, flags=re.MULTILINE).group(1).split(","))
    assert installed == set(PYPROJECT["project"]["optional-dependencies"]) - {"gpu"}
