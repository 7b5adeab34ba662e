"""The image recipe without building it (the real build is tests/e2e/test_docker_image.py): the build command,
the pinned base, the secrets policy, the entrypoint's shell."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


from runner.ship.docker import build_command, git_tag
from tests.conftest import REPO

DOCKERFILE = (REPO / "docker/Dockerfile").read_text()


def test_build_commands():
    root = Path("/repo")
    assert build_command(root, "buildah", "tunebook:abc123", None, None, None, "abc123") == [
        "buildah", "bud", "--isolation", "chroot", "--layers", "-f", "/repo/docker/Dockerfile",
        "-t", "tunebook:abc123", "-t", "tunebook:latest", "--build-arg", "TUNEBOOK_COMMIT=abc123", "/repo"]
    assert build_command(root, "docker", "ghcr.io/me/tb:abc", "localhost/base", "none", "transformers==5.16.1",
                         "abc", latest=False) == [
        "docker", "build", "-f", "/repo/docker/Dockerfile", "-t", "ghcr.io/me/tb:abc",
        "--build-arg", "BASE_IMAGE=localhost/base", "--build-arg", "TUNEBOOK_EXTRAS=none",
        "--build-arg", "TUNEBOOK_PIP_EXTRA=transformers==5.16.1", "--build-arg", "TUNEBOOK_COMMIT=abc", "/repo"]


def test_tag_carries_the_commit():
    tag = git_tag(REPO)
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if head.returncode != 0:
        assert tag == "nogit"
    else:
        assert tag.split("-")[0] == head.stdout.strip()
    r = subprocess.run([sys.executable, "-m", "runner.cli", "docker", "build", "--builder", "buildah", "--dry-run"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and f"-t tunebook:{tag} -t tunebook:latest" in r.stdout


def test_base_image_matches_the_axolotl_and_torch_pins():
    pins = dict(re.findall(r'"(axolotl|torch)==([0-9.]+)"', (REPO / "pyproject.toml").read_text()))
    base = re.search(r"^ARG BASE_IMAGE=(\S+)", DOCKERFILE, re.M).group(1)
    assert base.startswith(f"axolotlai/axolotl:{pins['axolotl']}-") and base.endswith(f"-{pins['torch']}")
    assert re.search(r"^FROM \$\{BASE_IMAGE\}", DOCKERFILE, re.M)


def test_no_secret_can_enter_the_image():
    # no build argument or baked env var carries a secret
    for line in DOCKERFILE.splitlines():
        if line.startswith(("ARG", "ENV")):
            assert not re.search(r"TOKEN|SECRET|PASSWORD|API_KEY|AWS_", line), line
    ignore = (REPO / ".dockerignore").read_text().split()
    for pattern in (".env", ".env.*", "**/.env", ".netrc", ".git", ".venv", ".cache", "runs", "**/*.pem", ".aws",
                    ".ssh"):
        assert pattern in ignore, f".dockerignore lacks {pattern}"
    copies = [l for l in DOCKERFILE.splitlines() if l.startswith(("COPY", "ADD"))]
    assert copies == ["COPY pyproject.toml ./", "COPY . ."]


def test_entrypoint_is_valid_shell():
    r = subprocess.run(["bash", "-n", str(REPO / "docker/entrypoint.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    text = (REPO / "docker/entrypoint.sh").read_text()
    assert 'make train RECIPE="$RECIPE"' in text and 'exec "$@"' in text
    assert "artifacts" not in text  # the old launch protocol is gone: SkyPilot runs `make train` itself

