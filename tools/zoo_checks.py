"""Run the MONAI Model Zoo's own CI checks on this bundle, offline, before it is submitted there.

The zoo sees the bundle only as ``models/<name>/`` inside its repository, with its own scripts, style settings and
pre-commit hooks at the root, so our ruff configuration and tests can agree with each other and still fail there.
This tool lays out such a tree in a scratch folder from the zoo's files (``../shared/tools/model_zoo_ci``, see its
README.md) and the bundle exactly as a release ships it (``tools.release.build_release_zip``, weights included),
runs every check that needs no network, and prints a table (check | result | seconds | note) that it also writes
as JSON. Exit status 0 only when every check that ran passed.

Checks (``--checks`` takes a subset of these keys):
  verify_min   ``python ci/verify_bundle.py -b NAME -m min``: files, version/changelog, metadata against the schema
  verify_full  ``python ci/verify_bundle.py -b NAME``: also properties, verify_net_in_out, TorchScript (the zoo's
               GPU premerge; it runs on a CPU too)
  unit_tests   ``python ci/unit_tests/runner.py --b NAME`` with tools/zoo/test_NAME.py as ci/unit_tests/test_NAME.py
  isort, black, flake8   ``./runtests.sh --isort`` (``--black``, ``--flake8``): the zoo's own script and settings
               (setup.cfg, pyproject.toml) over the whole tree, models/ and ci/ with our test file
  pytype       only when pytype is installed (it is not in requirements-dev.txt): otherwise reported as skipped
  pre_commit   ``pre-commit run -c precommit-offline.yaml --all-files`` (the zoo's hooks as local ones)

Usage (from the repository root; the training of the unit tests is small but still CPU work, so nice it)::

    nice .venv/bin/python -m tools.zoo_checks [--scratch DIR] [--json_out FILE] [--checks verify_min,isort]

The schema is not downloaded: the zoo's ``meta_schema_20240725.json`` goes where ``ci/prepare_schema.py`` puts it
(``<bundle>/eval/schema.json``), and ``models/model_info.json`` is ``{}`` (the bundle is not published yet).

Files over the zoo's size limit (1024 KB: the shipped weights, the embedded sample's volumes) are not committed to
the zoo; a submission lists them in ``large_files.yml`` with the addresses where they are hosted. The scratch tree
does the same with a local host: each such file leaves the committed tree, is listed in the bundle's
``large_files.yml`` with its sha256 and a ``file://`` address of a copy beside the tree, and is fetched back by the
zoo's own ``ci/utils.py`` ``download_large_files`` (the step ``verify_bundle.py`` runs first), untracked.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from scripts.cli_args import parse_list
from scripts.data.io_utils import write_json
from tools.release import BUNDLE_NAME, add_large_file, build_release_zip

__all__ = [
    "REPO_ROOT",
    "ZOO_CI",
    "CHECKS",
    "UNIT_TEST_FILE",
    "CheckResult",
    "ZooChecksError",
    "prepare_scratch",
    "run_checks",
    "format_table",
    "main",
]

REPO_ROOT = Path(__file__).resolve().parents[1]
#: the zoo's files (third-party, unchanged; read-only): copied into the scratch tree, never into the repository
ZOO_CI = REPO_ROOT.parent / "shared" / "tools" / "model_zoo_ci"
#: our zoo-style unit test file, which the zoo would keep as ci/unit_tests/test_<bundle>.py
UNIT_TEST_FILE = REPO_ROOT / "tools" / "zoo" / f"test_{BUNDLE_NAME}.py"
ZOO_FILES = ("ci", "setup.cfg", "pyproject.toml", "runtests.sh", "precommit-offline.yaml")
SCHEMA_FILE = "meta_schema_20240725.json"
TAIL_LINES = 40
# marks a scratch folder made by this tool, so that a rerun with the same --scratch may clear it
_MARKER = ".zoo_checks_scratch"
#: the zoo's pre-commit limit (check-added-large-files --maxkb=1024)
MAX_KB = 1024
# beside the tree, untracked: the "hosted" copies of the large files that large_files.yml points at
_HOST = ".large_files_host"
# untracked in the scratch repository: outputs of the checks and the schema, which the zoo's CI adds after checkout
_GIT_EXCLUDE = (
    "/.cache/",
    "/logs/",
    "/zoo_checks.json",
    "models/*/eval/",
    "models/*/models/verify_model.ts",
    "__pycache__/",
    f"/{_HOST}/",
)
_IDENTITY = ("-c", "user.name=zoo-checks", "-c", "user.email=zoo-checks@localhost", "-c", "commit.gpgsign=false")


class ZooChecksError(RuntimeError):
    """The scratch tree cannot be prepared (zoo files missing, scratch folder in use, release not buildable)."""


@dataclass
class CheckResult:
    """One row of the table; ``tail`` keeps the last output lines of a failure for the JSON report."""

    check: str
    result: str  # pass | fail | skip
    seconds: float
    note: str
    command: list[str] = field(default_factory=list)
    returncode: int | None = None
    log: str | None = None  # the full output, under <scratch>/logs/
    tail: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Check:
    """A zoo check: its table name, the command (from the scratch root) and how to summarise its output."""

    key: str
    name: str
    command: Callable[[Path], list[str]]
    timeout: int
    summary: Callable[[str, bool, Path], str]
    available: Callable[[], str | None] = lambda: None  # a reason to skip, or None


# ------------------------------------------------------------------------------------------------ the tree


def _copy_file(src: Path, dst: Path) -> None:
    """Copy without the source's read-only mode (the zoo folder is read-only; hooks must be able to fix files)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o755 if os.access(src, os.X_OK) else 0o644)


def _copy_zoo_files(zoo_ci: Path, root: Path) -> None:
    for name in ZOO_FILES:
        src = zoo_ci / name
        if src.is_file():
            _copy_file(src, root / name)
        elif src.is_dir():
            for path in sorted(src.rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts:
                    _copy_file(path, root / path.relative_to(zoo_ci))
        else:
            raise ZooChecksError(f"{src}: zoo file missing (see {zoo_ci / 'README.md'})")


def _claim_scratch(scratch: Path | None) -> Path:
    """A fresh temporary folder, or ``scratch`` when empty or made by an earlier run of this tool (then cleared)."""
    if scratch is None:
        root = Path(tempfile.mkdtemp(prefix="zoo_checks_"))
    else:
        root = scratch.resolve()
        if root.exists() and any(root.iterdir()):
            if not (root / _MARKER).is_file():
                raise ZooChecksError(f"{root}: not empty and not a zoo_checks scratch folder; choose another --scratch")
            shutil.rmtree(root)
        root.mkdir(parents=True, exist_ok=True)
    (root / _MARKER).write_text("made by tools/zoo_checks.py; a rerun clears this folder\n", encoding="utf-8")
    return root


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", *_IDENTITY, *args], cwd=root, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise ZooChecksError(f"git {' '.join(args)} in {root}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def prepare_scratch(
    scratch: str | os.PathLike | None = None,
    zoo_ci: str | os.PathLike = ZOO_CI,
    bundle_root: str | os.PathLike = REPO_ROOT,
    unit_test_file: str | os.PathLike | None = UNIT_TEST_FILE,
) -> Path:
    """Lay out a zoo-shaped tree and return its root: the zoo's files, ``models/<name>/`` unpacked from a release zip
    built from ``bundle_root``, the schema where prepare_schema puts it, and a git repository (pre-commit needs one).
    """
    zoo = Path(zoo_ci).resolve()
    if not (zoo / "ci" / "verify_bundle.py").is_file():
        raise ZooChecksError(f"{zoo}: not the zoo's CI folder (no ci/verify_bundle.py)")
    root = _claim_scratch(None if scratch is None else Path(scratch))
    _copy_zoo_files(zoo, root)
    models = root / "models"
    with tempfile.TemporaryDirectory(prefix="zoo_checks_dist_") as dist:
        archive = build_release_zip(bundle_root, dist)  # the shipped weights included, as a release carries them
        with zipfile.ZipFile(archive) as packed:
            names = packed.namelist()
            if f"{BUNDLE_NAME}/models/model.pt" not in names:
                raise ZooChecksError(f"{archive.name}: the release carries no models/model.pt (the zoo requires it)")
            packed.extractall(models)
    bundle = models / BUNDLE_NAME
    hosted = _host_large_files(bundle, root / _HOST)
    _copy_file(zoo / SCHEMA_FILE, bundle / "eval" / "schema.json")
    # the zoo's list of published versions: ours has none yet (verify_version_changes reads it)
    (models / "model_info.json").write_text("{}\n", encoding="utf-8")
    if unit_test_file is not None:
        _copy_file(Path(unit_test_file), root / "ci" / "unit_tests" / f"test_{BUNDLE_NAME}.py")
    _git(root, "init", "-q", "-b", "main")
    (root / ".git" / "info").mkdir(parents=True, exist_ok=True)
    (root / ".git" / "info" / "exclude").write_text("\n".join((*_GIT_EXCLUDE, _MARKER)) + "\n", encoding="utf-8")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", f"zoo-shaped scratch tree for {BUNDLE_NAME}")
    if hosted:  # fetched back, untracked, by the zoo's own code (as its CI does before verify_bundle)
        _fetch_large_files(root, bundle)
    return root


def _host_large_files(bundle: Path, host: Path) -> list[str]:
    """Move every file over ``MAX_KB`` to ``host`` and list it in the bundle's large_files.yml (file:// address,
    sha256); returns the bundle-relative paths moved."""
    moved = []
    for path in sorted(p for p in bundle.rglob("*") if p.is_file()):
        if -(-path.stat().st_size // 1024) <= MAX_KB:
            continue
        rel = path.relative_to(bundle).as_posix()
        copy = host / rel
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(copy))
        add_large_file(copy, copy.resolve().as_uri(), bundle, path=rel, large_files=bundle / "large_files.yml")
        moved.append(rel)
    return moved


def _fetch_large_files(root: Path, bundle: Path) -> None:
    code = (
        "import sys; sys.path.insert(0, 'ci'); from utils import download_large_files as d; d(sys.argv[1], sys.argv[2])"
    )
    done = subprocess.run(
        [_python(), "-c", code, str(bundle), "large_files.yml"], cwd=root, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise ZooChecksError(f"the zoo's download_large_files failed: {_error_line(done.stdout + done.stderr)}")


# ------------------------------------------------------------------------------------------------ the checks


def _python() -> str:
    return sys.executable


def _last_lines(text: str, count: int = TAIL_LINES) -> list[str]:
    return [line.rstrip() for line in text.splitlines() if line.strip()][-count:]


def _short(line: str, width: int = 160) -> str:
    line = " ".join(line.split())
    return line if len(line) <= width else line[: width - 3] + "..."


def _error_line(output: str) -> str:
    """The most telling line of a failed Python run: the exception line, else the last line."""
    lines = _last_lines(output, 200)
    for line in reversed(lines):
        if ("Error" in line or "Exception" in line) and not line.startswith(("  File", "Traceback")):
            return _short(line)
    return _short(lines[-1]) if lines else "no output"


# verify_bundle.py's progress lines and what each one means
_VERIFY_STEPS = {
    "directory is verified correctly.": "files",
    "version and changelog are verified correctly.": "version/changelog",
    "metadata format is verified correctly.": "metadata vs schema",
    "properties are verified correctly.": "properties",
    "data shape is verified correctly.": "verify_net_in_out",
    "export weights into TorchScript module successfully.": "TorchScript export",
}


def _verify_summary(output: str, ok: bool, root: Path) -> str:
    if not ok:
        return _error_line(output)
    lines = [line.strip() for line in output.splitlines()]
    parts = [", ".join(name for text, name in _VERIFY_STEPS.items() if text in lines) + " ok"]
    props = next((line for line in lines if line.startswith("all properties:")), None)
    if props is not None and props.split(":", 1)[1].strip() in ("[]", ""):
        parts.append("no app has a bundle_properties.py in this tree, so no app properties were checked")
    parts += [line for line in lines if line.startswith(("skip ", "bundle: "))]
    parts.append("models/model_info.json = {} (not published yet)")
    return "; ".join(parts)


def _unit_summary(output: str, ok: bool, root: Path) -> str:
    ran = next((line.strip() for line in reversed(output.splitlines()) if line.startswith("Ran ")), "")
    status = next((line.strip() for line in reversed(output.splitlines()) if line.startswith(("OK", "FAILED"))), "")
    if "does not exists, skip test" in output:
        return "runner found no test file (it skips silently)"
    note = ", ".join(p for p in (ran, status) if p)
    if not ok:
        failed = [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith(("FAIL:", "ERROR:"))]
        note += "; " + "; ".join(failed) if failed else "; " + _error_line(output)
    return note


def _lint_summary(tool: str) -> Callable[[str, bool, Path], str]:
    where = f"./runtests.sh --{tool}: the zoo's script and settings, over the whole tree (models/ and ci/)"

    def summary(output: str, ok: bool, root: Path) -> str:
        if ok:
            return where
        lines = [line for line in output.splitlines() if line.strip()]
        if tool == "isort":
            bad = [line.split("ERROR:", 1)[1].split(" Imports")[0].strip() for line in lines if "ERROR:" in line]
        elif tool == "black":
            bad = [line.split("would reformat", 1)[1].strip() for line in lines if "would reformat" in line]
        else:
            bad = [line for line in lines if line.count(":") >= 3 and not line[0].isdigit()]
        return f"{len(bad)} finding(s): " + "; ".join(_short(b, 100) for b in bad[:4])

    return summary


def _precommit_summary(output: str, ok: bool, root: Path) -> str:
    if ok:
        return "all hooks passed"
    failed = [line.split("...", 1)[0].rstrip(". ") for line in output.splitlines() if line.rstrip().endswith("Failed")]
    parts = ["failed hooks: " + ", ".join(failed) if failed else _error_line(output)]
    large = sorted({line.split(" (", 1)[0] for line in output.splitlines() if "exceeds" in line and "KB" in line})
    if large:
        bundle = f"models/{BUNDLE_NAME}/"
        groups: dict[str, int] = {}
        for path in large:
            rel = path[len(bundle) :] if path.startswith(bundle) else path
            top = rel.split("/", 1)[0] + "/" if "/" in rel else rel
            groups[top] = groups.get(top, 0) + 1
        parts.append(f"{len(large)} files over the size limit: " + ", ".join(f"{n} in {g}" for g, n in groups.items()))
    changed = _git(root, "diff", "--name-only").split()
    if changed:
        more = " ..." if len(changed) > 6 else ""
        parts.append(f"hooks rewrote {len(changed)} file(s): " + ", ".join(changed[:6]) + more)
    return "; ".join(parts)


def _module_missing(name: str) -> Callable[[], str | None]:
    """runtests.sh pip-installs a missing tool from the network: report it missing instead."""

    def missing() -> str | None:
        return None if importlib.util.find_spec(name) else f"skipped: {name} not installed (requirements-dev.txt)"

    return missing


def _pytype_missing() -> str | None:
    """pytype is optional here (not in requirements-dev.txt); runtests.sh would install it from the network."""
    return None if importlib.util.find_spec("pytype") else "skipped: pytype not installed"


CHECKS: dict[str, Check] = {
    check.key: check
    for check in (
        Check(
            "verify_min",
            "verify_bundle min",
            lambda root: [_python(), "ci/verify_bundle.py", "-b", BUNDLE_NAME, "-m", "min"],
            600,
            _verify_summary,
        ),
        Check(
            "verify_full",
            "verify_bundle full",
            lambda root: [_python(), "ci/verify_bundle.py", "-b", BUNDLE_NAME],
            1200,
            _verify_summary,
        ),
        Check(
            "unit_tests",
            "unit tests",
            lambda root: [_python(), "ci/unit_tests/runner.py", "--b", BUNDLE_NAME],
            1800,
            _unit_summary,
        ),
        Check(
            "isort",
            "isort",
            lambda root: ["./runtests.sh", "--isort"],
            300,
            _lint_summary("isort"),
            _module_missing("isort"),
        ),
        Check(
            "black",
            "black",
            lambda root: ["./runtests.sh", "--black"],
            300,
            _lint_summary("black"),
            _module_missing("black"),
        ),
        Check(
            "flake8",
            "flake8",
            lambda root: ["./runtests.sh", "--flake8"],
            300,
            _lint_summary("flake8"),
            _module_missing("flake8"),
        ),
        Check(
            "pytype",
            "pytype",
            lambda root: ["./runtests.sh", "--pytype"],
            1800,
            lambda output, ok, root: "./runtests.sh --pytype" if ok else _error_line(output),
            _pytype_missing,
        ),
        Check(
            "pre_commit",
            "pre-commit",
            lambda root: [
                str(Path(sys.executable).parent / "pre-commit"),
                "run",
                "-c",
                "precommit-offline.yaml",
                "--all-files",
            ],
            600,
            _precommit_summary,
            _module_missing("pre_commit_hooks"),
        ),
    )
}


def _environment(root: Path, threads: int) -> dict[str, str]:
    """The venv first on PATH, and the bundle folder on PYTHONPATH so ``scripts`` imports as MONAI's bundle_root
    makes it import."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    env["PYTHONPATH"] = str(root / "models" / BUNDLE_NAME)
    env["PRE_COMMIT_HOME"] = str(root / ".cache" / "pre-commit")
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("VIRTUAL_ENV", None)
    return env


def _run(command: list[str], root: Path, env: dict[str, str], timeout: int) -> tuple[int | None, str]:
    """Run in its own process group so that a timeout stops the command and everything it started."""
    with subprocess.Popen(
        command,
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=timeout)
            return proc.returncode, output
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return None, output + f"\ntimed out after {timeout} s"


def run_checks(
    root: Path,
    checks: Sequence[str] | None = None,
    threads: int = 1,
    timeout_scale: float = 1.0,
    echo: Callable[[str], None] | None = print,
) -> list[CheckResult]:
    """Run the selected checks (all by default, in ``CHECKS`` order) from the scratch root ``root``."""
    keys = list(CHECKS) if not checks else list(checks)
    unknown = [key for key in keys if key not in CHECKS]
    if unknown:
        raise ZooChecksError(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    env = _environment(root, threads)
    results = []
    for key in (k for k in CHECKS if k in keys):
        check = CHECKS[key]
        reason = check.available()
        if reason is not None:
            results.append(CheckResult(check.name, "skip", 0.0, reason))
            continue
        command = check.command(root)
        if echo is not None:
            echo(f"[zoo_checks] {check.name}: {' '.join(command)}")
        start = time.perf_counter()
        code, output = _run(command, root, env, max(1, int(check.timeout * timeout_scale)))
        seconds = round(time.perf_counter() - start, 1)
        ok = code == 0
        log = root / "logs" / f"{key}.log"
        log.parent.mkdir(exist_ok=True)
        log.write_text(output, encoding="utf-8")
        try:
            note = check.summary(output, ok, root)
        except Exception as err:  # a summary must never hide the result itself
            note = f"(no summary: {err})"
        if code is None:
            note = f"timed out after {int(check.timeout * timeout_scale)} s; {note}"
        tail = [] if ok else _last_lines(output)
        results.append(CheckResult(check.name, "pass" if ok else "fail", seconds, note, command, code, str(log), tail))
        if echo is not None:
            echo(f"[zoo_checks] {check.name}: {results[-1].result} ({seconds} s)")
    return results


def format_table(results: Sequence[CheckResult]) -> str:
    """A Markdown table: check | result | seconds | note."""
    rows = [("check", "result", "seconds", "note"), ("---", "---", "---:", "---")]
    rows += [(r.check, r.result, f"{r.seconds:.1f}", r.note.replace("|", "/")) for r in results]
    return "\n".join("| " + " | ".join(row) + " |" for row in rows)


def main(argv: Sequence[str] | None = None) -> int:
    """Command line; exit status 0 when every check that ran passed, 1 when one failed, 2 on a setup error."""
    parser = argparse.ArgumentParser(prog="python -m tools.zoo_checks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--scratch", default=None, help="scratch root (default: a fresh temporary folder, kept)")
    parser.add_argument("--json_out", default=None, help="JSON report (default: <scratch>/zoo_checks.json)")
    parser.add_argument("--checks", default=None, help=f"comma-separated subset of: {','.join(CHECKS)}")
    parser.add_argument("--zoo_ci", default=str(ZOO_CI), help="the zoo's CI files (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads of the checks (default: %(default)s)")
    parser.add_argument("--timeout_scale", type=float, default=1.0, help="multiplies every check's time limit")
    args = parser.parse_args(argv)
    try:
        checks = parse_list(args.checks, "checks", ZooChecksError)
        unknown = [key for key in checks if key not in CHECKS]
        if unknown:
            raise ZooChecksError(f"--checks: unknown {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
        start = time.perf_counter()
        root = prepare_scratch(args.scratch, args.zoo_ci)
        print(f"[zoo_checks] scratch tree {root} ready in {time.perf_counter() - start:.1f} s")
        results = run_checks(root, checks, threads=max(1, args.threads), timeout_scale=args.timeout_scale)
    except ZooChecksError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    passed = all(r.result != "fail" for r in results)
    report = {
        "bundle": BUNDLE_NAME,
        "scratch": str(root),
        "zoo_ci": str(Path(args.zoo_ci).resolve()),
        "passed": passed,
        "results": [asdict(r) for r in results],
    }
    json_out = Path(args.json_out) if args.json_out else root / "zoo_checks.json"
    write_json(json_out, report)
    print(format_table(results))
    for r in results:
        if r.result == "fail":
            print(f"\n--- {r.check}: last {len(r.tail)} lines ---\n" + "\n".join(r.tail))
    print(f"\n{'all checks that ran passed' if passed else 'some checks FAILED'}; report: {json_out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
