"""The bundled seccomp profile is data: Docker's default allowlist (moby v29.7.2, kept verbatim beside it) plus
only the rules Chromium's sandbox needs. The built-image checks are in test_docker_sandbox.py."""

from __future__ import annotations

import json

from gateway.runtime.docker import BUNDLED_SECCOMP, DOCKER_DEFAULT_SECCOMP, seccomp_profile

# CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP: namespaces the sandbox never makes.
OTHER_NAMESPACES = 0x00020000 | 0x04000000 | 0x08000000 | 0x02000000


def _chromium_rules(profile: dict) -> list[dict]:
    return [rule for rule in profile["syscalls"] if rule.get("comment", "").startswith("chromium sandbox:")]


def test_the_profile_is_dockers_allowlist_plus_the_sandbox_rules() -> None:
    profile = json.loads(seccomp_profile("sandbox"))
    docker_default = json.loads(DOCKER_DEFAULT_SECCOMP.read_text())
    added = _chromium_rules(profile)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1  # refuse the rest
    assert {k: v for k, v in profile.items() if k != "syscalls"} == {k: v for k, v in docker_default.items() if k != "syscalls"}
    assert [rule for rule in profile["syscalls"] if rule not in added] == docker_default["syscalls"]
    assert sorted({name for rule in added for name in rule["names"]}) == ["chroot", "clone", "unshare"]


def test_namespaces_are_allowed_only_without_mount_uts_ipc_or_cgroup_flags() -> None:
    for rule in _chromium_rules(json.loads(BUNDLED_SECCOMP.read_text())):
        if rule["names"] == ["chroot"]:
            assert "args" not in rule
            continue
        (arg,) = rule["args"]
        assert arg["op"] == "SCMP_CMP_MASKED_EQ" and arg["value"] == OTHER_NAMESPACES and arg.get("valueTwo", 0) == 0
