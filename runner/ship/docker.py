"""`tunebook docker build`: the training image (docker/Dockerfile, with the repository as its context), built by a
running Docker engine or else by buildah, and tagged with the git commit it was built from (docs/deploy.md)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from runner.errors import TunebookError

DOCKERFILE = "docker/Dockerfile"
BUILDERS = ("docker", "buildah")


def git_tag(root: Path) -> str:
    """The image tag for this checkout: the commit (12 hex), `-dirty` with uncommitted changes."""
    def git(*a):
        return subprocess.run(["git", *a], cwd=root, capture_output=True, text=True, timeout=20)

    try:
        head = git("rev-parse", "--short=12", "HEAD")
    except (OSError, subprocess.TimeoutExpired):
        return "nogit"
    if head.returncode != 0:
        return "nogit"
    dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    return head.stdout.strip() + ("-dirty" if dirty else "")


def _docker_engine() -> bool:
    if not shutil.which("docker"):
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=15).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def choose_builder(builder: str) -> str:
    """`auto`: docker when its engine runs, else buildah when installed; any other name as given."""
    if builder != "auto":
        return builder
    if _docker_engine():
        return "docker"
    if shutil.which("buildah"):
        return "buildah"
    raise TunebookError("no image builder: neither a running Docker engine nor buildah",
                        fix="Start Docker, or install buildah (Debian/Ubuntu: apt-get install buildah).")


def build_command(root: Path, builder: str, tag: str, base_image: str | None, extras: str | None,
                  pip_extra: str | None, commit: str, latest: bool = True) -> list[str]:
    """The docker/buildah command that builds docker/Dockerfile with the repository as its context."""
    args = []
    if base_image:
        args += ["--build-arg", f"BASE_IMAGE={base_image}"]
    if extras:
        args += ["--build-arg", f"TUNEBOOK_EXTRAS={extras}"]
    if pip_extra:
        args += ["--build-arg", f"TUNEBOOK_PIP_EXTRA={pip_extra}"]
    args += ["--build-arg", f"TUNEBOOK_COMMIT={commit}"]
    tags = ["-t", tag]
    if latest and not tag.endswith(":latest"):
        tags += ["-t", tag.rsplit(":", 1)[0] + ":latest"]
    if builder == "docker":
        return ["docker", "build", "-f", str(root / DOCKERFILE), *tags, *args, str(root)]
    if builder == "buildah":
        return ["buildah", "bud", "--isolation", "chroot", "--layers", "-f", str(root / DOCKERFILE), *tags, *args,
                str(root)]
    raise TunebookError(f"unknown builder '{builder}'", fix="Use --builder docker or --builder buildah.")


def run_build(cmd: list[str], builder: str) -> None:
    """Run the build command, its output on this terminal; a TunebookError when it fails."""
    rc = subprocess.run(cmd).returncode
    if rc != 0:
        raise TunebookError(f"the image build failed ({builder} exited with {rc})", exit_code=1,
                            fix="Read the build output above.")
