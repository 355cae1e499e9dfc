"""Check that the environment holds every declared dependency at its floor.

`make test-floors` resolves the project with uv's `--resolution lowest-direct` (each
direct dependency at the lowest version its specifier allows, where the other floors
let it) and then runs the fast tests. This script fails when a direct dependency came
out above its declared floor: that floor cannot be installed with the others, so it
claims a version the code never ran with.
Usage: python .ci/check_floors.py extra[,extra...]
"""

import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def declared_floors(extras: list[str]) -> dict[str, str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extras {unknown}; pyproject.toml declares {sorted(optional)}")
    floors: dict[str, str] = {}
    for spec in list(project["dependencies"]) + [s for e in extras for s in optional[e]]:
        spec = spec.split(";")[0].strip()
        name = re.split(r"[<>=!~\[ ]", spec, maxsplit=1)[0].lower()
        if name == project["name"]:  # an extra that includes others: theirs are listed too
            continue
        floor = re.search(r"(?:>=|==)\s*([0-9][0-9.]*)", spec)
        if floor is None:
            raise SystemExit(f"{spec!r} in pyproject.toml has no floor")
        floors[name] = max(floors.get(name, floor.group(1)), floor.group(1), key=_release)
    return floors


def _release(text: str) -> tuple[int, ...]:
    parts = [int(p) for p in re.match(r"[0-9.]*[0-9]", text).group(0).split(".")]
    while parts and parts[-1] == 0:  # 1.9 == 1.9.0
        parts.pop()
    return tuple(parts)


def main(extras: list[str]) -> int:
    rows, above = [], []
    for name, floor in sorted(declared_floors(extras).items()):
        try:
            installed = version(name)
        except PackageNotFoundError:
            installed = "missing"
        rows.append((name, floor, installed))
        if installed == "missing" or _release(installed) != _release(floor):
            above.append(name)
    width = max(len(r[0]) for r in rows)
    for name, floor, installed in rows:
        mark = "" if name not in above else "   <- not at its floor"
        print(f"{name:<{width}}  >= {floor:<10} installed {installed}{mark}")
    if above:
        print(f"{len(above)} dependencies are not at their declared floor: {', '.join(above)}. Raise each floor "
              "to the version installed, or find what holds it up.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main([e for e in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if e]))
