"""Install the built wheel the way a user would, with its core dependencies only, and use it.

The wheel is built from a copy of the sources (no build artefacts in the checkout) and installed with
``pip install --no-index`` into a fresh venv, so pip itself checks that the core requirements are met. The
core packages (torch, numpy, scipy, constriction, safetensors and what they need) are the ones already
installed here, made visible through a ``.pth`` file pointing at a folder of symlinks: nothing is downloaded,
and transformers, peft, flwr, matplotlib and rich are genuinely absent from the new venv.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from email.parser import Parser
from importlib import metadata
from pathlib import Path
from zipfile import ZipFile

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = {"torch", "numpy", "scipy", "constriction", "safetensors"}
EXTRA_MODULES = ("transformers", "peft", "flwr", "matplotlib", "rich", "gguf", "accelerate", "ray")

try:
    from packaging.requirements import Requirement
except ImportError:  # pragma: no cover - pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _env() -> dict[str, str]:
    """This process's environment minus what would let the source tree or user site leak in."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env.update(PYTHONNOUSERSITE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", OMP_NUM_THREADS="1")
    return env


def _build_wheel(work: Path) -> Path:
    src = work / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(ROOT / "src", src / "src", ignore=ignore)
    dist = work / "dist"
    pip_wheel = ["wheel", "--no-deps", "--no-build-isolation", "--no-cache-dir", "-q", "-w", str(dist)]
    subprocess.run(
        [sys.executable, "-m", "pip", *pip_wheel, str(src)],
        check=True,
        env=_env(),
        capture_output=True,
        timeout=120,
    )
    (wheel,) = dist.glob("fedsqueeze-*.whl")
    return wheel


def _wheel_metadata(wheel: Path):
    with ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return Parser().parsestr(zf.read(name).decode())


def _core_closure(requirements: list[str]) -> list[metadata.Distribution]:
    """The installed distributions that the unconditional ``requirements`` need, recursively."""
    seen: dict[str, metadata.Distribution] = {}
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        key = _canon(req.name)
        if key in seen:
            continue
        dist = metadata.distribution(req.name)  # PackageNotFoundError: the dev env itself is incomplete
        seen[key] = dist
        todo.extend(Requirement(r) for r in dist.requires or [])
    return list(seen.values())


def _link_site(dists: list[metadata.Distribution], target: Path) -> None:
    """Symlink every top-level file or folder of ``dists`` (code and ``.dist-info``) into ``target``."""
    target.mkdir()
    for dist in dists:
        site = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or []}
        for top in sorted(tops - {"..", "__pycache__"}):
            if (site / top).exists() and not (target / top).exists():
                (target / top).symlink_to(site / top)


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory):
    """(venv python, wheel path, wheel metadata) with fedsqueeze installed from its wheel, core deps only."""
    work = tmp_path_factory.mktemp("wheel")
    wheel = _build_wheel(work)
    meta = _wheel_metadata(wheel)
    core_reqs = [r for r in meta.get_all("Requires-Dist") if ";" not in r]
    dists = _core_closure(core_reqs)
    _link_site(dists, work / "core-site")
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=os.name != "nt").create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
        env=_env(),
    ).stdout.strip()
    (Path(purelib) / "_fedsqueeze_core.pth").write_text(f"{work / 'core-site'}\n")
    # pip >= 22.3 installs into another interpreter's environment: the new venv needs no pip of its own.
    pip_install = ["--python", str(py), "install", "--no-index", "--no-cache-dir", "-q", str(wheel)]
    done = subprocess.run(
        [sys.executable, "-m", "pip", *pip_install],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr  # pip found every core requirement among the linked packages
    return py, wheel, meta


def _run(py: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    env = _env()
    for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        env.pop(key, None)
    return subprocess.run(
        [str(py), "-c", code, *args], env=env, capture_output=True, text=True, timeout=120, cwd=py.parent
    )


def test_wheel_requires_only_the_core_unconditionally(core_venv):
    _, wheel, meta = core_venv
    unconditional = {_canon(Requirement(r).name) for r in meta.get_all("Requires-Dist") if ";" not in r}
    assert unconditional == CORE
    for r in meta.get_all("Requires-Dist"):
        ops = {spec.operator for spec in Requirement(r).specifier}
        assert ops <= {">=", "<"}, f"not a floor (or an upper bound) in the wheel's requirements: {r}"
    assert set(meta.get_all("Provides-Extra")) == {"llm", "flower", "plots", "cli", "data", "all"}
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert meta["Version"] == version
    assert wheel.name.startswith(f"fedsqueeze-{version}-")


CODEC_SCRIPT = r"""
import json, os, sys
before = dict(os.environ)
import torch
import fedsqueeze
from fedsqueeze import codecs, ConfigError, ErrorFeedback, UpdateSpec, decode
assert dict(os.environ) == before, "importing fedsqueeze changed the environment"
torch.manual_seed(0)
u = {"a": torch.randn(64, 8), "b": torch.randn(8, 64)}
spec = UpdateSpec.from_tensors(u)
ref = {k: 0.5 * v + 0.1 for k, v in u.items()}  # the reference of the predictive codec (others ignore it)
done, refused = [], []
for name in codecs.available():
    codec = codecs.get(name)
    extra = {"reference": ref} if codec.uses_reference else {}
    try:
        blob = codec.encode(u, seed=1, **extra)
    except ConfigError as exc:
        refused.append(name)  # cg_fedllm needs a trained autoencoder
        assert "trained autoencoder" in str(exc), exc
        continue
    out = decode(blob, spec, reference=ref)
    assert set(out) == set(u) and all(out[k].shape == u[k].shape for k in u), name
    ef = ErrorFeedback(codecs.get(name))  # the client-side path, residual included
    assert set(decode(ef.encode(u, seed=2, reference=ref), spec, reference=ref)) == set(u), name
    done.append(name)
print(json.dumps({
    "file": fedsqueeze.__file__,
    "version": fedsqueeze.__version__,
    "done": done,
    "refused": refused,
    "modules": sorted(m for m in sys.modules if m.split(".")[0] in sys.argv[1].split(",")),
}))
"""


def _check_codec_run(out: dict) -> None:
    assert out["modules"] == []  # no transformers, peft, flwr, matplotlib, rich, ... imported
    assert out["refused"] == ["cg_fedllm"]
    expected = {"identity", "fp16", "topk", "flm_topk", "wf_ecq", "cg_fedllm_q", "qsgd", "powersgd"}
    assert expected | {"predictive"} <= set(out["done"])


def test_core_install_encodes_and_decodes_every_plain_codec(core_venv):
    py, _, meta = core_venv
    res = _run(py, CODEC_SCRIPT, ",".join(EXTRA_MODULES))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert Path(out["file"]).is_relative_to(py.parents[1])  # the installed wheel, not the source tree
    assert out["version"] == meta["Version"]
    _check_codec_run(out)


def test_codecs_import_no_extra_even_when_installed():
    # Here every extra is installed: the codecs still must not import any of them.
    env = {**_env(), "PYTHONPATH": str(ROOT / "src")}
    res = subprocess.run(
        [sys.executable, "-c", CODEC_SCRIPT, ",".join(EXTRA_MODULES)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    _check_codec_run(json.loads(res.stdout.strip().splitlines()[-1]))


MISSING_SCRIPT = r"""
import json
from fedsqueeze import MissingExtraError
msgs = {}
def grab(key, fn):
    try:
        fn()
    except MissingExtraError as exc:
        msgs[key] = str(exc)
from fedsqueeze.models import loading
grab("llm", lambda: loading.load_tokenizer("minilm"))
from fedsqueeze.fl import report
grab("plots", lambda: report.plot_metric_vs_uplink([], __import__("pathlib").Path("x.png"), title="t"))
grab("cli", lambda: report.Progress(2, 0, enabled=True))
from fedsqueeze.flower import simulate
grab("flower", lambda: simulate.simulate(None))
print(json.dumps(msgs))
"""


def test_missing_extras_give_one_line_naming_the_extra(core_venv):
    py, _, _ = core_venv
    res = _run(py, MISSING_SCRIPT)
    assert res.returncode == 0, res.stderr
    msgs = json.loads(res.stdout.strip().splitlines()[-1])
    assert set(msgs) == {"llm", "plots", "cli", "flower"}
    for extra, msg in msgs.items():
        assert "\n" not in msg
        assert msg.startswith(f"fedsqueeze[{extra}] is needed for ")
        assert msg.endswith(f"pip install 'fedsqueeze[{extra}]'")
    # The console script: one line on stderr, exit status 2, no traceback.
    cli = subprocess.run(
        [str(py.parent / "fedsqueeze"), "codecs"], env=_env(), capture_output=True, text=True, timeout=60
    )
    assert cli.returncode == 2
    assert cli.stderr.strip().splitlines() == [
        "fedsqueeze: error: fedsqueeze[cli] is needed for the fedsqueeze command (rich is not installed): "
        "pip install 'fedsqueeze[cli]'"
    ]
