"""
Build the sdist and the wheel as a release would, and check what they carry.

Run by tox's ``package`` environment (``bash .ci/tox -e package``); any
Python with ``build`` and ``twine`` installed can run it from the repository
root. It fails, naming what is wrong, when:

- ``twine check --strict`` rejects the metadata (README.rst is the PyPI page:
  it must render as plain reStructuredText, without Sphinx roles);
- a file of the package's source tree (a template, a static file, a
  migration, ``py.typed``) is missing from the wheel, or the wheel carries
  anything outside the package;
- the sdist lacks the license, the documentation sources or the test suite;
- the metadata's Django or Python bounds differ from the supported ones.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from email.parser import Parser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "django_mailkit"
REQUIRES_DJANGO = "django<6.2,>=5.2"
REQUIRES_PYTHON = ">=3.11"
#: Besides the package, what the sdist must carry (paths from its root).
SDIST_FILES = [
    "LICENSE",
    "README.rst",
    "pyproject.toml",
    "tox.ini",
    "docs/conf.py",
    "docs/index.rst",
    "tests/conftest.py",
    "tests/settings.py",
    "tests/smtpserver.py",
]


def source_files(tree: Path) -> set[str]:
    """Every file of the package in the copied tree."""
    return {
        path.relative_to(tree).as_posix()
        for path in (tree / PACKAGE).rglob("*")
        if path.is_file()
    }


def copy_tree(target: Path) -> None:
    """
    Copy the files git would commit (tracked, or new and not ignored).

    Building from the work tree itself would let a stale ``*.egg-info`` left
    by an earlier build (tox builds one for every run) list files that
    pyproject.toml and MANIFEST.in no longer include.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # (not a file deleted from the work tree)
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def main() -> int:
    problems: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        tree, dist = Path(tmp, "tree"), Path(tmp, "dist")
        copy_tree(tree)
        sources = source_files(tree)
        build = subprocess.run(
            [sys.executable, "-m", "build", "--outdir", str(dist), str(tree)],
            capture_output=True,
            text=True,
        )
        if build.returncode:
            print(build.stdout, build.stderr, sep="\n")
            print(f"python -m build failed (exit {build.returncode})")
            return 1
        wheels = sorted(dist.glob("*.whl"))
        sdists = sorted(dist.glob("*.tar.gz"))
        if len(wheels) != 1 or len(sdists) != 1:
            print(f"Expected one wheel and one sdist, got {sorted(dist.iterdir())}")
            return 1
        subprocess.run(
            [sys.executable, "-m", "twine", "check", "--strict", *wheels, *sdists],
            check=True,
        )
        with zipfile.ZipFile(wheels[0]) as wheel:
            names = set(wheel.namelist())
            metadata_name = next(n for n in names if n.endswith(".dist-info/METADATA"))
            metadata = Parser().parsestr(wheel.read(metadata_name).decode())
        with tarfile.open(sdists[0]) as sdist:
            top = sdists[0].name.removesuffix(".tar.gz") + "/"
            sdist_names = {n.removeprefix(top) for n in sdist.getnames()}

    for missing in sorted(sources - names):
        problems.append(
            f"wheel: {missing} is missing (add it to [tool.setuptools.package-data] "
            "in pyproject.toml)"
        )
    for name in sorted(names):
        if not name.startswith((f"{PACKAGE}/", f"{PACKAGE}-")):
            problems.append(f"wheel: {name} is outside the package")
        elif name.endswith((".pyc", ".pyo")) or "__pycache__" in name:
            problems.append(f"wheel: {name} is bytecode")
    if not any(name.endswith(".dist-info/licenses/LICENSE") for name in names):
        problems.append("wheel: the LICENSE file is missing from its .dist-info")
    requires = [r.replace(" ", "").lower() for r in metadata.get_all("Requires-Dist")]
    if REQUIRES_DJANGO not in requires:
        problems.append(f"metadata: Requires-Dist {requires} lacks {REQUIRES_DJANGO}")
    if metadata["Requires-Python"] != REQUIRES_PYTHON:
        problems.append(
            f"metadata: Requires-Python is {metadata['Requires-Python']!r}, "
            f"not {REQUIRES_PYTHON!r}"
        )

    for required in SDIST_FILES + sorted(sources):
        if required not in sdist_names:
            problems.append(f"sdist: {required} is missing (see MANIFEST.in)")
    for name in sorted(sdist_names):
        if "__pycache__" in name or name.endswith((".pyc", ".pyo")):
            problems.append(f"sdist: {name} is bytecode")

    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(
        f"{wheels[0].name} ({len(names)} files) and {sdists[0].name} "
        f"({len(sdist_names)} files): OK"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
