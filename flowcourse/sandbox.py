"""Where a submission's kernel runs: a bubblewrap sandbox, and the package as a kernel sees it.

A submission is untrusted code. The grader (:mod:`flowcourse.grading`) starts each kernel with
:func:`kernel_command`, which wraps it in ``bwrap`` (Debian's ``bubblewrap`` package). We use
bubblewrap rather than ``unshare`` because it builds the whole view in one unprivileged call:
a fresh root holding only what a kernel needs, bind-mounted read-only, and new pid, mount,
network, IPC and UTS namespaces; and it kills the sandbox when its parent dies. Inside:

- the kernel runs as the unprivileged user ``nobody`` (uid 65534): when the grader runs as
  root the launcher drops to it before any student code runs; otherwise the grader's own
  unprivileged user is mapped to it in a user namespace;
- it sees ``/usr``, ``/etc``, the Python installation and virtual environment (read-only), a
  private writable home and ``/tmp`` (size-capped tmpfs), and one folder of its own for the
  kernel's sockets; not the submissions, not the grader's files, not other kernels;
- a new pid namespace: no other process of the machine is visible (``/proc`` is its own), and
  when grading ends every process the submission started dies with the namespace, whatever
  session or process group it moved to;
- no network (a new network namespace with only a loopback); the grader talks to the kernel
  over Unix sockets (ZeroMQ ``ipc``);
- ``flowcourse`` is a copy without the reference solutions and the grader
  (:func:`package_view`): ``flowcourse.exercises`` is a stand-in whose check cells do nothing,
  and importing a reference raises ``ReferenceUnavailable``.

Not contained: CPU time beyond the grader's time limits, a share of the machine's memory below
the address-space cap (``--memory-mb``), and whatever the kernel of the machine itself lets an
unprivileged process do. ``--no-sandbox`` grades without any of this (time and memory limits
still hold), for machines without bubblewrap and for trusted work.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

__all__ = [
    "INSTALL_HINT",
    "NOBODY",
    "available",
    "package_view",
    "kernel_command",
]

NOBODY = 65534
INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora: dnf install "
    "bubblewrap), or grade without containment: flowcourse grade --no-sandbox"
)
TMPFS_BYTES = 512 * 2**20  # the kernel's home and /tmp: room for a matplotlib cache, not a disk

# Runs inside the sandbox before the kernel: drop root, cap memory, start ipykernel.
LAUNCHER = f"""\
import os, resource, sys
limit, contained = int(sys.argv.pop(1)), sys.argv.pop(1) == "sandbox"
if contained and os.getuid() == 0:  # a root grader: become nobody before any student code
    os.setgroups([])
    os.setgid({NOBODY})
    os.setuid({NOBODY})
if limit > 0:
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
if sys.path and sys.path[0] in ("", "."):
    del sys.path[0]
from ipykernel import kernelapp
kernelapp.launch_new_instance()
"""


@functools.cache
def available() -> str | None:
    """None when bubblewrap works here, else why not (one line)."""
    if shutil.which("bwrap") is None:
        return "bubblewrap (bwrap) is not installed"
    probe = [*_namespaces(), *_root_view(), "--", sys.executable, "-c", "pass"]
    try:
        done = subprocess.run(["bwrap", *probe], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        return f"bubblewrap does not run here ({type(error).__name__}: {error})"
    if done.returncode != 0:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"bubblewrap does not run here ({why[-1] if why else done.returncode})"
    return None


def _namespaces() -> list[str]:
    args = ["--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts"]
    args += ["--die-with-parent", "--new-session"]
    if os.geteuid() == 0:
        # The launcher needs these two to become nobody; setuid clears every capability.
        args += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    else:
        args += ["--unshare-user", "--uid", str(NOBODY), "--gid", str(NOBODY)]
    return args


def _python_roots() -> list[Path]:
    """The folders a kernel's Python needs: the installation, the venv, a user site."""
    roots = {Path(sys.base_prefix), Path(sys.prefix)}
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        roots.add(Path(sysconfig.get_paths()[key]))
    executable = Path(sys.executable)
    roots.add(executable.parent)
    roots.add(executable.resolve().parent.parent)
    return sorted({r.resolve() if r.exists() else r for r in roots if r.exists()})


def _root_view() -> list[str]:
    """bwrap arguments for a minimal read-only system: /usr, /etc, Python, a private /tmp;
    nothing of /home, /root, /work, /srv, /mnt or the real /tmp except what is bound later."""
    args: list[str] = []
    for top in ("/bin", "/lib", "/lib32", "/lib64", "/sbin"):
        path = Path(top)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), top]
        elif path.exists():
            args += ["--ro-bind", top, top]
    args += ["--ro-bind", "/usr", "/usr", "--ro-bind", "/etc", "/etc"]
    # The private /tmp comes before Python's folders: mounted after them, it would hide a
    # virtual environment that lives under /tmp (a clone in a temporary folder).
    args += ["--perms", "1777", "--size", str(TMPFS_BYTES), "--tmpfs", "/tmp"]
    roots = [r for r in _python_roots() if not str(r).startswith(("/usr/", "/etc/"))]
    # Keep only outermost folders; create their parents world-readable (bwrap makes 0700).
    outer = [r for r in roots if not any(o != r and o in r.parents for o in roots)]
    args += _parents(outer)
    for root in outer:
        args += ["--ro-bind", str(root), str(root)]
    args += ["--proc", "/proc", "--dev", "/dev"]
    return args


def _parents(paths: list[Path]) -> list[str]:
    made: list[str] = []
    for path in paths:
        for parent in reversed(path.parents):
            text = str(parent)
            skip = text in ("/", "/tmp", "/proc", "/dev") or text.startswith(("/usr", "/etc"))
            if not skip and text not in made:
                made.append(text)
    args: list[str] = []
    for text in made:
        args += ["--perms", "0755", "--dir", text]
    return args


def package_view(folder: Path) -> Path:
    """A copy of the ``flowcourse`` package as a graded kernel may see it, in ``folder``.

    Everything but the grader, the release tool and the reference solutions: the library's
    building blocks (bijections, flows, train, data, plot, checks, ...) import as usual;
    ``flowcourse.assignments`` holds only its ``kernel`` module; ``flowcourse.exercises``
    is a stand-in (check cells print that they are skipped). Returns the copy's package folder.
    """
    source = Path(__file__).resolve().parent
    target = Path(folder) / "flowcourse"
    shutil.copytree(
        source,
        target,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "assignments"),
    )
    for name in ("grading.py", "release.py", "sandbox.py"):
        (target / name).unlink(missing_ok=True)
    (target / "exercises.py").write_text(_EXERCISES_STANDIN)
    (target / "assignments").mkdir()
    shutil.copy2(source / "assignments" / "kernel.py", target / "assignments" / "kernel.py")
    (target / "assignments" / "__init__.py").write_text(_ASSIGNMENTS_STANDIN)
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


_UNAVAILABLE = '''
class ReferenceUnavailable(ImportError):
    """The course's reference solutions are not available while a submission is graded."""


def _unavailable(name):
    if name.rpartition(".")[2].startswith("__"):  # the import system asks for __path__ etc.
        return AttributeError(name)
    return ReferenceUnavailable(
        f"{name} is not available while grading: the grader checks your own code, so write "
        "the task yourself (the references exist only to check it)"
    )
'''

_EXERCISES_STANDIN = (
    '''"""flowcourse.exercises while a submission is graded: check cells do nothing here, and the
reference implementations are not available (see flowcourse.sandbox in the course)."""

GRADING_ENV = "FLOWCOURSE_GRADING"
NOT_IMPLEMENTED = "not implemented yet"
'''
    + _UNAVAILABLE
    + """

def check(name, obj=None, seed=0, plot=True):
    print(f"(check of {name} skipped while grading)")


def report(assignment=None):
    print("(report skipped while grading)")


def __getattr__(name):
    raise _unavailable(f"flowcourse.exercises.{name}")
"""
)

_ASSIGNMENTS_STANDIN = (
    '''"""flowcourse.assignments while a submission is graded: only its kernel module is here."""

import sys
'''
    + _UNAVAILABLE
    + '''

class _Refuse:
    """Importing an assignment's module (where the references live) fails with a clear error."""

    def find_spec(self, name, path=None, target=None):
        if name.startswith(__name__ + ".") and name != __name__ + ".kernel":
            raise _unavailable(name)
        return None


sys.meta_path.insert(0, _Refuse())


def __getattr__(name):
    raise _unavailable(f"flowcourse.assignments.{name}")
'''
)


def kernel_command(
    python_args: list[str],
    *,
    home: Path,
    sockets: Path,
    view: Path,
    sandbox: bool,
    env: dict[str, str],
    status_fd: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The command and environment that start a kernel: ``python -c LAUNCHER limit ...``.

    ``home``: the kernel's working folder (a fresh tmpfs inside the sandbox); ``sockets``: the
    folder of its connection file and Unix sockets (bound read-write at the same path);
    ``view``: :func:`package_view`'s copy, which replaces the real package for the kernel.
    Without ``sandbox`` the kernel runs as a plain child process that finds the view first on
    ``PYTHONPATH`` (the references are then absent from imports only).
    """
    python = [sys.executable, "-c", LAUNCHER, python_args[0], "sandbox" if sandbox else "plain"]
    python += python_args[1:]
    if not sandbox:
        return python, {**os.environ, **env, "PYTHONPATH": str(view.parent), "HOME": str(home)}
    package = Path(__file__).resolve().parent
    args = ["bwrap", *_namespaces(), *_root_view()]
    args += _parents([package, sockets, home])
    args += ["--ro-bind", str(view), str(package)]
    args += ["--perms", "0777", "--size", str(TMPFS_BYTES), "--tmpfs", str(home)]
    args += ["--bind", str(sockets), str(sockets), "--chdir", str(home), "--clearenv"]
    if status_fd is not None:
        args += ["--json-status-fd", str(status_fd)]
    path = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin"
    for name, value in {**env, "HOME": str(home), "PATH": path, "LANG": "C.UTF-8"}.items():
        args += ["--setenv", name, value]
    return [*args, "--", *python], {}
