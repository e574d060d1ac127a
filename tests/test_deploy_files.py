"""docker-compose.yml and Dockerfile.gpu agree with the code they deploy.

No Docker is needed: the files are parsed and every name they use (settings, modules, files,
services, pins) is checked against the repository.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile.gpu"
SERVICES = {"postgres", "redis", "migrate", "api", "worker"}
APP_SERVICES = {"migrate", "api", "worker"}
BISE_VAR = re.compile(r"\bBISE_([A-Z0-9_]+)\b")


# --------------------------------------------------------------------------- helpers


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def services() -> dict[str, Any]:
    return compose()["services"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        instr, _, args = buf.partition(" ")
        out.append((instr.upper(), args.strip()))
        buf = ""
    assert not buf, "Dockerfile ends with a continuation line"
    return out


def exec_form(args: str) -> list[str]:
    """Arguments of CMD/ENTRYPOINT/COPY in JSON (exec) form or shell form."""
    if args.startswith("["):
        return json.loads(args)
    return shlex.split(args)


def argv(command: Any) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    return [str(c) for c in command]


def python_modules(words: list[str]) -> list[str]:
    """Modules run as ``python -m MODULE`` in an argv (also inside ``sh -c '...'`` strings)."""
    found: list[str] = []
    for i, word in enumerate(words):
        if " " in word:  # a shell string, e.g. sh -c "python -m worker"
            found += python_modules(shlex.split(word))
        elif re.fullmatch(r"(.*/)?python(3(\.\d+)?)?", word) and words[i + 1 : i + 2] == ["-m"] and i + 2 < len(words):
            found.append(words[i + 2])
    return found


def entry_modules() -> list[tuple[str, str]]:
    """(where, module) for every ``python -m`` in compose commands and the Dockerfile CMD."""
    found: list[tuple[str, str]] = []
    for name, svc in services().items():
        for key in ("command", "entrypoint"):
            found += [(f"compose:{name}.{key}", m) for m in python_modules(argv(svc.get(key)))]
    for instr, args in dockerfile_instructions():
        if instr in ("CMD", "ENTRYPOINT"):
            found += [(f"Dockerfile:{instr}", m) for m in python_modules(exec_form(args))]
    return found


def environment(svc: dict[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pins = {}
    for dep in deps:
        m = re.fullmatch(r"\s*([A-Za-z0-9_.\-]+)\s*==\s*([^\s;]+)\s*", dep)
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


# --------------------------------------------------------------------------- compose


def test_compose_has_the_five_services() -> None:
    assert set(services()) == SERVICES


def test_every_service_builds_the_gpu_image_or_uses_postgres_redis() -> None:
    for name, svc in services().items():
        if name in APP_SERVICES:
            build = svc.get("build")
            assert isinstance(build, dict), f"{name} must build the image"
            assert build.get("dockerfile") == "Dockerfile.gpu", name
            assert (ROOT / build.get("context", ".") / "Dockerfile.gpu").is_file()
        else:
            assert "build" not in svc, name
            image = svc.get("image", "")
            assert image.split(":")[0] == name, f"{name} uses {image!r}"
    assert services()["postgres"]["image"] == "postgres:16"
    assert services()["redis"]["image"] == "redis:7"
    # one image: the three app services build it identically
    builds = {json.dumps(services()[n]["build"], sort_keys=True) for n in APP_SERVICES}
    assert len(builds) == 1


def test_every_bise_variable_is_a_setting() -> None:
    fields = set(Settings.model_fields)
    assert Settings.model_config.get("env_prefix") == "BISE_"
    for path in (COMPOSE, DOCKERFILE):
        names = set(BISE_VAR.findall(path.read_text()))
        assert names, f"{path.name} sets no BISE_* variable"
        unknown = sorted(f"BISE_{n}" for n in names if n.lower() not in fields)
        assert not unknown, f"{path.name} uses variables that service.settings.Settings lacks: {unknown}"


def _settings_for(service: str, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for var in list(os.environ):
        if var.startswith("BISE_"):
            monkeypatch.delenv(var)
    for key, value in environment(services()[service]).items():
        if key.startswith("BISE_"):
            monkeypatch.setenv(key, value)
    return Settings()


@pytest.mark.parametrize("service", sorted(APP_SERVICES))
def test_compose_environment_is_a_valid_settings_object(service: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_for(service, monkeypatch)
    assert settings.database_url == environment(services()[service])["BISE_DATABASE_URL"]
    assert not settings.is_sqlite
    if service in ("api", "worker"):
        assert settings.host == "0.0.0.0"
        assert settings.port == 8000
        assert settings.data_roots == [Path("/data")]
        assert settings.storage_url == "file:///var/lib/bise/storage"
        assert settings.redis_url.startswith("redis://redis:")
    if service == "worker":
        assert settings.device == "auto"


def test_database_url_uses_psycopg3_and_the_postgres_service() -> None:
    for name in APP_SERVICES:
        url = make_url(environment(services()[name])["BISE_DATABASE_URL"])
        assert url.drivername == "postgresql+psycopg", name
        assert url.host == "postgres"
        pg = environment(services()["postgres"])
        assert (url.username, url.password, url.database) == (
            pg["POSTGRES_USER"],
            pg["POSTGRES_PASSWORD"],
            pg["POSTGRES_DB"],
        )


@pytest.mark.parametrize("where,module", entry_modules())
def test_python_m_modules_exist_and_are_runnable(where: str, module: str) -> None:
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{where}: module {module} not found"
    if spec.submodule_search_locations is not None:  # a package: needs __main__
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{where}: {module}/__main__.py missing"
    else:
        assert spec.origin and Path(spec.origin).is_file()
        source = Path(spec.origin).read_text()
        assert re.search(r"""if\s+__name__\s*==\s*['"]__main__['"]\s*:""", source), (
            f"{where}: {module} has no `if __name__ == \"__main__\":` block"
        )


def test_entry_points_cover_api_worker_and_migrations() -> None:
    mods = {m for _, m in entry_modules()}
    assert {"api", "worker", "api.admin"} <= mods
    svc = services()
    assert argv(svc["migrate"]["command"])[-3:] == ["-m", "api.admin", "migrate"]
    assert python_modules(argv(svc["api"]["command"])) == ["api"]
    assert python_modules(argv(svc["worker"]["command"])) == ["worker"]


def test_worker_reserves_an_nvidia_gpu() -> None:
    devices = services()["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and (d.get("count") or d.get("device_ids"))
        for d in devices
    )


def test_depends_on_references_existing_services() -> None:
    names = set(services())
    valid = {"service_started", "service_healthy", "service_completed_successfully"}
    for name, svc in services().items():
        deps = svc.get("depends_on") or {}
        if isinstance(deps, list):
            deps = {d: {"condition": "service_started"} for d in deps}
        for dep, spec in deps.items():
            assert dep in names, f"{name} depends on unknown service {dep}"
            assert dep != name
            cond = spec.get("condition", "service_started")
            assert cond in valid, f"{name} -> {dep}: {cond}"
            if cond == "service_healthy":
                assert "healthcheck" in services()[dep], f"{name} waits for {dep} to be healthy but it has no healthcheck"
    for name in ("api", "worker"):
        deps = services()[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully"
        assert deps["redis"]["condition"] == "service_healthy"
    assert services()["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_migrate_is_one_shot() -> None:
    assert services()["migrate"]["restart"] == "no"  # the string, not YAML's boolean


def test_healthchecks() -> None:
    svc = services()
    assert "pg_isready" in " ".join(argv(svc["postgres"]["healthcheck"]["test"]))
    assert "redis-cli" in " ".join(argv(svc["redis"]["healthcheck"]["test"]))
    api_check = " ".join(argv(svc["api"]["healthcheck"]["test"]))
    assert "curl" not in api_check and "urllib" in api_check and "/healthz" in api_check
    assert ":8000/" in api_check


def test_volumes_are_shared_and_declared() -> None:
    svc = services()
    declared = set(compose().get("volumes") or {})
    env = environment(svc["api"])
    storage_path = env["BISE_STORAGE_URL"].removeprefix("file://")
    for name in ("api", "worker"):
        mounts = [str(v) for v in svc[name].get("volumes", [])]
        storage_mounts = [m for m in mounts if m.split(":")[1] == storage_path]
        assert storage_mounts, f"{name} does not mount the storage folder {storage_path}"
        assert storage_mounts[0].split(":")[0] in declared
        data = [m for m in mounts if m.split(":")[1] == "/data"]
        assert data and data[0].startswith("./data:") and data[0].endswith(":ro"), name
    api_storage = {m for m in map(str, svc["api"]["volumes"]) if m.split(":")[1] == storage_path}
    worker_storage = {m for m in map(str, svc["worker"]["volumes"]) if m.split(":")[1] == storage_path}
    assert api_storage == worker_storage, "api and worker must share one storage volume"
    for name, s in svc.items():
        for m in map(str, s.get("volumes", [])):
            src = m.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in declared, f"{name} mounts undeclared volume {src}"
    assert "8000:8000" in [str(p) for p in svc["api"]["ports"]]


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_pins_torch_like_pyproject() -> None:
    pins = pyproject_pins()
    text = "\n".join(args for _, args in dockerfile_instructions())
    for pkg in ("torch", "torchvision"):
        assert pkg in pins, f"pyproject.toml does not pin {pkg}"
        found = re.findall(rf"(?<![\w-]){pkg}==([^\s\"']+)", text)
        assert found, f"Dockerfile.gpu does not pin {pkg}"
        assert set(found) == {pins[pkg]}, f"{pkg}: Dockerfile {found} vs pyproject {pins[pkg]}"
        assert f"{pkg}=={pins[pkg]}" in DOCKERFILE.read_text()


def test_dockerfile_copy_sources_exist() -> None:
    copies = [exec_form(args) for instr, args in dockerfile_instructions() if instr in ("COPY", "ADD")]
    assert copies
    copied: set[str] = set()
    for words in copies:
        if any(w.startswith("--from") for w in words):
            continue
        sources = [w for w in words if not w.startswith("--")][:-1]
        assert sources
        for src in sources:
            assert (ROOT / src).exists(), f"COPY source {src} is not in the repository"
            copied.add(src.rstrip("/"))
    # everything `pip install .` needs to build the package: every package pyproject names
    import tomllib

    includes = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [name.rstrip("*") for name in includes]
    assert "bise_client" in packages
    for needed in ("pyproject.toml", "README.md", *packages):
        assert needed in copied, f"Dockerfile.gpu does not copy {needed}"


def test_dockerfile_runtime() -> None:
    instrs = dockerfile_instructions()
    text = DOCKERFILE.read_text()
    base = [args for instr, args in instrs if instr == "FROM"]
    assert base and base[0].startswith("nvidia/cuda:") and "runtime" in base[0]
    assert "python3.11" in text and "/opt/venv" in text
    users = [args for instr, args in instrs if instr == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert ("WORKDIR", "/app") in instrs
    assert any(instr == "EXPOSE" and "8000" in args.split() for instr, args in instrs)
    envs = " ".join(args for instr, args in instrs if instr == "ENV")
    assert "PYTHONUNBUFFERED=1" in envs and re.search(r"PATH=/opt/venv/bin:", envs)
    cmd = [exec_form(args) for instr, args in instrs if instr == "CMD"]
    assert cmd and cmd[-1] == ["python", "-m", "api"]


def test_dockerfile_installs_dependencies_before_copying_the_source() -> None:
    instrs = dockerfile_instructions()

    def index(pred) -> int:
        return next(i for i, (instr, args) in enumerate(instrs) if pred(instr, args))

    torch_install = index(lambda i, a: i == "RUN" and "torch==" in a)
    first_source_copy = index(lambda i, a: i == "COPY" and any(p in exec_form(a) for p in ("bise_core", "service")))
    project_install = index(lambda i, a: i == "RUN" and re.search(r"pip install[^&]*\s\.(\s|$)", a) is not None)
    assert torch_install < first_source_copy < project_install
