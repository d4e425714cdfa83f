"""Offline installs for GPU machines (tools/gpu_check.sh --prepare / --wheels; docs/benchmarks.md, GPU section).

Standard library only: it runs before anything else is installed.

``prepare`` (on a machine that reaches PyPI) fills a folder with every package mmvit needs besides torch, as
wheels for the GPU machine's Python and platform (``pip download --only-binary=:all: --platform ...
--python-version ...``), and writes ``manifest.json``:

- numpy, einops, pyyaml, safetensors, tqdm, pillow (mmvit), av, decord, webdataset (data), DeepSpeed and
  its dependencies except torch, resolved by pip for the target (none of them depends on torch).
- DeepSpeed 0.19.8 has no wheel on PyPI, only a source archive, whose setup.py imports torch (to pre-compile
  ops) and which pip builds in an isolated environment that it fills from an index. Offline, with torch
  present, that fails for lack of setuptools unless ``--no-build-isolation`` is given, and would need the
  GPU machine to build it. So ``prepare`` builds the wheel here (``pip wheel --no-deps``, ``DS_BUILD_OPS=0``):
  without torch in the isolated build, DeepSpeed pre-compiles nothing and the wheel is pure Python
  (``py3-none-any``); its ops compile just in time on first use, and mmvit's training needs none of them (a
  torch AdamW, NCCL).
- xformers: PyPI's wheels are built against one torch. Up to 0.0.34 each pins it exactly (0.0.34:
  ``torch==2.10.0``, 0.0.33.post2: ``torch==2.9.1``, ...); 0.0.35 declares ``torch>=2.10`` (built on torch's
  stable ABI, built against torch 2.10 with CUDA 12.8). With ``--torch X.Y[.Z]`` the newest release whose
  declared requirement admits that torch is chosen from pip's own resolution report (metadata only, no
  download); none: xformers is left out and the GPU check runs the other backends.
- mmvit itself as a wheel, and the repository as a source archive (tools/, configs/ are not in the wheel).

``install`` (on the GPU machine, offline) installs the manifest's packages with ``pip install --no-index
--find-links DIR --no-deps``, into a venv made with ``--system-site-packages`` (it sees the machine's own
CUDA torch) or into the current environment. torch is never named, so never replaced; packages already
present stay as they are (``--no-deps`` and unpinned names), except the pinned deepspeed, xformers and mmvit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEEPSPEED = "deepspeed==0.19.8"
# mmvit's own and its data extra's requirements (setup.cfg); "av<19" falls back to "av" where no wheel fits.
BASE = ["numpy", "einops", "pyyaml", "safetensors", "tqdm", "pillow", "decord==0.6.0", "webdataset==1.0.2"]
AV = "av<19"
MANIFEST = "manifest.json"


def log(msg: str) -> None:
    print(f"[gpu_wheels] {msg}", flush=True)


def platforms(glibc: str = "2.28", arch: str = "x86_64") -> list[str]:
    """manylinux tags a glibc-``glibc`` machine accepts, newest first (pip does not expand ``manylinux_2_X``)."""
    major, minor = (int(x) for x in glibc.split("."))
    if major != 2 or minor < 17:
        raise ValueError(f"--glibc {glibc}: expected 2.17 or newer")
    tags = [f"manylinux_2_{m}_{arch}" for m in range(minor, 16, -1)]
    return tags + [f"manylinux2014_{arch}"]  # pip adds manylinux2010 and manylinux1 for this one


def target_args(python: str, glibc: str) -> list[str]:
    if not re.fullmatch(r"3\.\d+", python):
        raise ValueError(f"--python {python!r}: expected a version such as 3.12")
    nodot = python.replace(".", "")
    args = ["--only-binary=:all:", "--python-version", python, "--implementation", "cp", "--abi", f"cp{nodot}"]
    for p in platforms(glibc):
        args += ["--platform", p]
    return args


def pip(args: list[str], *, python: str = sys.executable, timeout: float = 900, env: dict | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    cmd = [python, "-m", "pip", *args]
    log("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", **(env or {})})
    if check and proc.returncode != 0:
        raise RuntimeError(f"pip {' '.join(args[:2])} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}"
                           f"\n{proc.stderr[-3000:]}")
    return proc


# -- versions ---------------------------------------------------------------------------------------------

def version_tuple(v: str) -> tuple[int, ...]:
    """``2.11.0+cu130`` -> ``(2, 11, 0)``; ``2.11`` -> ``(2, 11, 0)`` (local labels and pre-releases ignored)."""
    parts = [int(x) for x in re.findall(r"\d+", v.split("+")[0].split("rc")[0].split("a")[0])[:3]]
    return tuple(parts + [0] * (3 - len(parts)))


def admits(spec: str, version: str) -> bool:
    """Whether a requirement specifier such as ``>=2.10`` or ``==2.10.0`` or ``>=2.4,<2.6`` admits ``version``."""
    v = version_tuple(version)
    for clause in filter(None, (c.strip() for c in spec.split(","))):
        m = re.fullmatch(r"(==|!=|>=|<=|>|<|~=)\s*([0-9][0-9a-zA-Z.+*]*)", clause)
        if not m:
            raise ValueError(f"cannot read the version specifier {clause!r}")
        op, ref = m.groups()
        if ref.endswith(".*"):
            prefix = version_tuple(ref[:-2])[:ref.count(".")]
            ok = v[:len(prefix)] == prefix
            ok = ok if op == "==" else not ok
        else:
            r = version_tuple(ref)
            ok = {"==": v == r, "!=": v != r, ">=": v >= r, "<=": v <= r, ">": v > r, "<": v < r,
                  "~=": v >= r and v[:max(1, ref.count("."))] == r[:max(1, ref.count("."))]}[op]
        if not ok:
            return False
    return True


def torch_requirement(requires_dist: list[str]) -> str | None:
    """The specifier of ``torch`` in a package's Requires-Dist (None if it names none)."""
    for req in requires_dist:
        m = re.match(r"\s*torch\s*(\(?)([^;)]*)\)?\s*(;.*)?$", req)
        if m and not re.match(r"\s*torch[a-z_-]", req):
            if m.group(3) and "extra" in m.group(3):
                continue
            return m.group(2).strip()
    return None


def package_versions(name: str) -> list[str]:
    """Versions on the index, newest first (``pip index versions``)."""
    out = pip(["index", "versions", name]).stdout
    m = re.search(r"Available versions:\s*(.+)", out)
    if not m:
        raise RuntimeError(f"pip index versions {name}: no version list in\n{out[-1000:]}")
    return [v.strip() for v in m.group(1).split(",") if v.strip()]


def wheel_metadata(requirement: str, target: list[str]) -> dict:
    """Version, Requires-Dist and file name of the wheel pip would pick for ``target`` (metadata only)."""
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, "report.json")
        pip(["install", "--dry-run", "--ignore-installed", "--no-deps", "--quiet", "--target", os.path.join(tmp, "t"),
             "--report", report, *target, requirement])
        with open(report) as f:
            item = json.load(f)["install"][0]
    return {"version": item["metadata"]["version"], "requires_dist": item["metadata"].get("requires_dist") or [],
            "file": item["download_info"]["url"].rsplit("/", 1)[-1]}


def pick_xformers(torch_version: str | None, target: list[str], tries: int = 8) -> dict:
    """The newest xformers whose declared torch requirement admits ``torch_version`` (see module docstring)."""
    if torch_version is None:
        meta = wheel_metadata("xformers", target)
        meta["torch_requirement"] = torch_requirement(meta["requires_dist"])
        meta["note"] = (f"no --torch given: the newest xformers, which declares torch {meta['torch_requirement']}; "
                        "pass --torch (the GPU machine's torch.__version__) to check it")
        return meta
    looked = []
    for v in package_versions("xformers")[:tries]:
        try:
            meta = wheel_metadata(f"xformers=={v}", target)
        except RuntimeError:
            looked.append(f"{v} (no wheel for this Python/platform)")
            continue
        spec = torch_requirement(meta["requires_dist"])
        looked.append(f"{v} (torch {spec})")
        if spec is not None and admits(spec, torch_version):
            meta["torch_requirement"] = spec
            meta["note"] = f"declares torch {spec}, which admits torch {torch_version}"
            return meta
    return {"version": None, "note": f"no xformers release on the index declares a torch that admits "
                                     f"{torch_version}; looked at " + ", ".join(looked)}


# -- prepare ----------------------------------------------------------------------------------------------

def _wheel_requires(path: str) -> list[str]:
    """Unconditional Requires-Dist of a wheel, torch left out."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode()
    reqs = []
    for line in text.splitlines():
        if line.startswith("Requires-Dist:"):
            req = line.split(":", 1)[1].strip()
            if ";" in req and "extra" in req.split(";", 1)[1]:
                continue
            name = re.match(r"[A-Za-z0-9._-]+", req).group(0).lower()
            if name != "torch":
                reqs.append(req.split(";")[0].strip())
    return reqs


def _cpp_lib_info(path: str) -> dict | None:
    """The build record xformers ships in its wheel (torch and CUDA it was built with), if any."""
    with zipfile.ZipFile(path) as z:
        name = next((n for n in z.namelist() if n.endswith("xformers/cpp_lib.json")), None)
        return json.loads(z.read(name)) if name else None


def _new_wheel(folder: str, before: set[str], prefix: str) -> str:
    new = [f for f in os.listdir(folder) if f not in before and f.lower().startswith(prefix) and f.endswith(".whl")]
    if not new:
        have = [f for f in os.listdir(folder) if f.lower().startswith(prefix) and f.endswith(".whl")]
        if have:
            return os.path.join(folder, have[0])
        raise RuntimeError(f"no {prefix}*.whl appeared in {folder}")
    return os.path.join(folder, new[0])


def prepare(folder: str, python: str, torch_version: str | None = None, glibc: str = "2.28",
            xformers: str = "auto") -> dict:
    """Fill ``folder`` for an offline install on a ``python`` manylinux x86_64 machine; returns the manifest."""
    t0 = time.time()
    os.makedirs(folder, exist_ok=True)
    target = target_args(python, glibc)
    manifest: dict = {"python": python, "platforms": platforms(glibc), "torch": torch_version, "install": [],
                      "notes": [], "created": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "prepared_with": f"{sys.executable} (Python {sys.version.split()[0]})"}

    # DeepSpeed: only a source archive on PyPI; build its pure-Python wheel here (module docstring).
    before = set(os.listdir(folder))
    pip(["wheel", "--no-deps", "--wheel-dir", folder, DEEPSPEED], env={"DS_BUILD_OPS": "0"})
    ds = _new_wheel(folder, before, "deepspeed-")
    if not ds.endswith("-py3-none-any.whl"):
        raise RuntimeError(f"{os.path.basename(ds)} is not a pure-Python wheel: ops were pre-compiled for this "
                           "machine; unset DS_BUILD_* and retry")
    manifest["deepspeed"] = {"file": os.path.basename(ds), "how": "built here from PyPI's source archive "
                             "(PyPI has no wheel of 0.19.8); pure Python, ops compile just in time"}
    manifest["notes"].append("deepspeed 0.19.8: PyPI has only a source archive; the wheel here was built from "
                             "it with DS_BUILD_OPS=0 (pure Python). Building it offline on the GPU machine would "
                             "need --no-build-isolation and setuptools there.")

    # mmvit: a wheel of the package, and the repository (tools/, configs/ and tests/ are not in the wheel).
    before = set(os.listdir(folder))
    pip(["wheel", "--no-deps", "--wheel-dir", folder, ROOT])
    mm = _new_wheel(folder, before, "mmvit-")
    manifest["mmvit"] = {"file": os.path.basename(mm)}
    sha = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], check=False, capture_output=True,
                         text=True).stdout.strip() if shutil.which("git") else ""
    if sha:
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               check=False, capture_output=True, text=True).stdout.strip()
        src = os.path.join(folder, f"mmvit-src-{sha}.tar.gz")
        subprocess.run(["git", "-C", ROOT, "archive", "--format=tar.gz", "--prefix=mmvit/", "-o", src, "HEAD"],
                       check=True)
        manifest["source"] = {"file": os.path.basename(src), "commit": sha, "uncommitted_changes": bool(dirty)}
        if dirty:
            manifest["notes"].append(f"the source archive holds commit {sha}; uncommitted changes are not in it")

    # Binary wheels for the target, dependencies resolved by pip (no requirement here pulls torch).
    reqs = list(dict.fromkeys(BASE + _wheel_requires(ds) + _wheel_requires(mm)))
    av = AV
    try:
        pip(["download", *target, "--dest", folder, *reqs, av])
    except RuntimeError as e:
        if "av" not in str(e):
            raise
        av = "av"
        manifest["notes"].append(f"no wheel of {AV} for Python {python}: took the newest av")
        pip(["download", *target, "--dest", folder, *reqs, av])

    if xformers == "none":
        meta = {"version": None, "note": "left out (--xformers none)"}
    elif xformers == "auto":
        meta = pick_xformers(torch_version, target)
    else:
        meta = wheel_metadata(f"xformers=={xformers}", target)
        meta["torch_requirement"] = torch_requirement(meta["requires_dist"])
        meta["note"] = f"chosen with --xformers; declares torch {meta['torch_requirement']}"
    extra = []
    if meta.get("version"):
        before = set(os.listdir(folder))
        pip(["download", *target, "--no-deps", "--dest", folder, f"xformers=={meta['version']}"])
        xf = _new_wheel(folder, before, "xformers-")
        meta["file"] = os.path.basename(xf)
        meta["built_with"] = (_cpp_lib_info(xf) or {}).get("version")
        extra.append(f"xformers=={meta['version']}")
        built = meta["built_with"] or {}
        if built.get("cuda"):
            manifest["notes"].append(
                f"xformers {meta['version']} was built with torch {built.get('torch')} and CUDA "
                f"{built['cuda'] // 100}.{built['cuda'] % 100}; under a torch of another CUDA major its own "
                "C++ library may not load, and memory_efficient_attention then runs through torch's kernels "
                "(the GPU check reports what works)")
    elif xformers != "none":
        manifest["notes"].append(f"xformers left out: {meta['note']}")
    manifest["xformers"] = {k: v for k, v in meta.items() if k != "requires_dist"}

    manifest["files"] = sorted(f for f in os.listdir(folder) if f.endswith((".whl", ".tar.gz")))
    # Every distribution in the folder (pip resolved their dependencies above; --no-deps installs only what is
    # named), unpinned so that what the machine already has stays, except the three pinned ones.
    pinned = {"deepspeed": DEEPSPEED, "mmvit": f"mmvit=={_wheel_version(mm)}"}
    if extra:
        pinned["xformers"] = extra[0]
    names = sorted({_dist_name(f) for f in manifest["files"] if f.endswith(".whl")} - {"torch"})
    manifest["install"] = [pinned.get(n, n) for n in names]
    manifest["seconds"] = round(time.time() - t0, 1)
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    log(f"{len(manifest['files'])} files in {folder} ({manifest['seconds']} s); manifest: {MANIFEST}")
    for n in manifest["notes"]:
        log("note: " + n)
    return manifest


def _wheel_version(path: str) -> str:
    return os.path.basename(path).split("-")[1]


def _dist_name(wheel: str) -> str:
    """Normalised distribution name of a wheel file (PEP 503: lower case, runs of -_. as -)."""
    return re.sub(r"[-_.]+", "-", os.path.basename(wheel).split("-")[0]).lower()


# -- install ----------------------------------------------------------------------------------------------

def read_manifest(folder: str) -> dict:
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: fill the folder with tools/gpu_check.sh --prepare {folder} "
                                "--python X.Y on a machine that reaches PyPI")
    with open(path) as f:
        return json.load(f)


def torch_identity(python: str) -> str | None:
    """``version file`` of the torch ``python`` imports, or None."""
    proc = subprocess.run([python, "-c", "import torch; print(torch.__version__, torch.__file__)"],
                          check=False, capture_output=True, text=True, timeout=300)
    return proc.stdout.strip() if proc.returncode == 0 else None


def link_parent_env(parent: str, child: str) -> None:
    """Make ``child`` (a new venv) see ``parent``'s packages after its own.

    ``--system-site-packages`` shows the base interpreter's site-packages; when ``parent`` is itself a venv (its
    torch in its own site-packages) that is not where torch is. A ``.pth`` file listing the parent's
    site-packages appends them to the child's ``sys.path``, behind the child's own packages.
    """
    code = ("import json, sys; "
            "print(json.dumps([p for p in sys.path if p.endswith(('site-packages', 'dist-packages'))]))")
    paths = json.loads(subprocess.run([parent, "-c", code], capture_output=True, text=True, check=True,
                                      timeout=120).stdout)
    own = json.loads(subprocess.run([child, "-c", code], capture_output=True, text=True, check=True,
                                    timeout=120).stdout)
    venv_site = next(p for p in own if os.path.realpath(p).startswith(os.path.realpath(os.path.dirname(
        os.path.dirname(child)))))
    extra = [p for p in paths if p not in own]
    with open(os.path.join(venv_site, "mmvit-parent-env.pth"), "w") as f:
        f.write("".join(p + "\n" for p in extra))


def install(folder: str, python: str, venv: str | None) -> tuple[str, dict]:
    """Install the manifest's packages offline; returns the Python to run with and what was done."""
    manifest = read_manifest(folder)
    have = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], check=False,
                          capture_output=True, text=True, timeout=60).stdout.strip()
    if have != manifest["python"]:
        raise RuntimeError(f"{folder} holds wheels for Python {manifest['python']}, but {python} is Python {have}: "
                           f"prepare it again with --python {have}")
    torch_before = torch_identity(python)
    info = {"folder": os.path.abspath(folder), "python": python, "torch_before": torch_before}
    if venv:
        if not os.path.isfile(os.path.join(venv, "bin", "python")):
            log(f"$ {python} -m venv --system-site-packages {venv}")
            proc = subprocess.run([python, "-m", "venv", "--system-site-packages", venv], check=False,
                                  capture_output=True, text=True, timeout=300)
            if proc.returncode != 0:
                raise RuntimeError(f"python -m venv failed ({proc.stderr.strip()[-500:]}); install into this "
                                   "environment instead (--here)")
        link_parent_env(python, os.path.join(venv, "bin", "python"))
        python = os.path.join(venv, "bin", "python")
        info["venv"] = os.path.abspath(venv)
    pip(["install", "--no-index", "--find-links", folder, "--no-deps", *manifest["install"]], python=python)
    torch_after = torch_identity(python)
    info.update(torch_after=torch_after, installed=manifest["install"])
    if torch_before is not None and torch_after != torch_before:
        raise RuntimeError(f"torch changed during the install ({torch_before} -> {torch_after}); this must not "
                           "happen: report it")
    return python, info


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--prepare", metavar="DIR", required=True)
    p.add_argument("--python", required=True, help="the GPU machine's Python, e.g. 3.12")
    p.add_argument("--torch", help="the GPU machine's torch version (picks the matching xformers)")
    p.add_argument("--glibc", default="2.28", help="the GPU machine's glibc (manylinux tags), default 2.28")
    p.add_argument("--xformers", default="auto", help="auto (default), none, or a version")
    a = p.parse_args(argv)
    prepare(a.prepare, a.python, a.torch, a.glibc, a.xformers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
