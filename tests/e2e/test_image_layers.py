"""The built images keep no build-time extra in any layer: the host's CA bundle and apt settings
(deploy/.build/, which may carry a proxy's password) are used by the build stages and left behind with them.
A file removed by a later layer is still in the layer that added it, so every layer is read, not the
container's file system."""

from __future__ import annotations

import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import skip_or_fail
from tests.e2e.harness import INSTANCE_IMAGE, engine_problem
from tests.e2e.test_compose import GATEWAY_IMAGE, POSTGRES_IMAGE

BUILD_DIR = Path(__file__).resolve().parents[2] / "deploy" / ".build"
# Where the Dockerfiles put the extras while they build (a whiteout of one means it was in a lower layer).
LEFT_BEHIND = ("tmp/build/", "tmp/.wh.build", "etc/apt/apt.conf.d/00aistudio-build", "etc/apt/apt.conf.d/.wh.00aistudio-build")


def layer_paths(image: str) -> list[list[str]]:
    """Every path in every layer of `image`, read from `docker save` as it streams."""
    layers: list[list[str]] = []
    with subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE) as save:
        with tarfile.open(fileobj=save.stdout, mode="r|") as archive:
            for member in archive:
                if member.isfile() and member.name.endswith("layer.tar"):  # a repeated layer is a link
                    with tarfile.open(fileobj=archive.extractfile(member), mode="r|") as layer:
                        layers.append([entry.name.removeprefix("./") for entry in layer])
    assert save.returncode == 0, f"docker save {image} failed"
    return layers


@pytest.mark.parametrize("image", [INSTANCE_IMAGE, GATEWAY_IMAGE, POSTGRES_IMAGE])
def test_no_layer_of_the_image_holds_the_build_time_extras(image: str) -> None:
    problem = engine_problem(image)
    if problem:
        skip_or_fail(problem)
    if not (BUILD_DIR / "ca-certificates.crt").exists():
        skip_or_fail("deploy/.build/ has no CA bundle: the images were not built by deploy/build-images.sh here")
    layers = layer_paths(image)
    assert len(layers) >= 2 and any("usr/bin/dpkg" in paths for paths in layers)  # the whole file system was read
    found = [path for paths in layers for path in paths if path.startswith(LEFT_BEHIND)]
    assert found == [], f"{image} keeps build-time extras in its layers: {found[:5]}"
