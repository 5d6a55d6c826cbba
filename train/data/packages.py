"""Where a Debian package's files are, asked of dpkg itself.

Several speech packages install into shared trees whose convenient names (``sounds/en``,
``sounds/it``) are alternatives links made only by *other* packages, pulled in as recommends.
``scripts/sysdeps.sh`` installs without recommends, so a fresh machine has the files but not
the links; a path built from such a name once passed on a developer's machine and failed on a
fresh one. Every data source therefore finds its files through ``dpkg -L PACKAGE``.
"""
from __future__ import annotations

import functools
import subprocess
from pathlib import Path


class PackageMissing(FileNotFoundError):
    """A Debian package the caller needs is not installed."""


@functools.lru_cache(maxsize=64)
def package_files(package: str) -> tuple[Path, ...]:
    """Every regular file ``package`` installed (``dpkg -L``), sorted.

    Raises :class:`PackageMissing` with the install hint when dpkg does not know the package.
    """
    done = subprocess.run(["dpkg", "-L", package], capture_output=True, text=True)
    if done.returncode != 0:
        raise PackageMissing(f"Debian package {package} is not installed "
                             "(scripts/sysdeps.sh installs it; as root: "
                             f"apt-get install --no-install-recommends {package})")
    return tuple(sorted(p for p in map(Path, done.stdout.splitlines()) if p.is_file()))


def package_dir(package: str, suffix: str) -> Path:
    """The deepest directory that holds all of ``package``'s ``*suffix`` files.

    Callers name files by their path relative to it (a prompt set's ``digits/1``), which stays
    the same wherever the package puts its tree.
    """
    files = [p for p in package_files(package) if p.name.endswith(suffix)]
    if not files:
        raise PackageMissing(f"Debian package {package} has no *{suffix} files")
    parts = [f.parent.parts for f in files]
    depth = next((i for i, level in enumerate(zip(*parts)) if len(set(level)) != 1),
                 min(map(len, parts)))
    return Path(*parts[0][:depth])
