"""The bundled seccomp profile is data: Docker's default allowlist (moby docker-v29.7.2, kept verbatim beside it)
as Docker applies it to a container without capabilities on x86 and ARM, written out flat (no `includes` or
`excludes`, which containerd's Localhost loader ignores), plus only the rules Chromium's sandbox needs. The
built-image checks are in test_docker_sandbox.py."""

from __future__ import annotations

import json

from gateway.runtime.docker import BUNDLED_SECCOMP, DOCKER_DEFAULT_SECCOMP, seccomp_profile

# CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWCGROUP: namespaces the sandbox never makes.
OTHER_NAMESPACES = 0x00020000 | 0x04000000 | 0x08000000 | 0x02000000
ARCHES = {"amd64", "x32", "x86", "arm", "arm64"}  # Docker's names of the profile's architectures


def _applies_without_capabilities(rule: dict) -> bool:
    """Whether Docker keeps this rule for an instance container: no capability, an x86 or ARM machine."""
    includes, excludes = rule.get("includes") or {}, rule.get("excludes") or {}
    if includes.get("caps") or (includes.get("arches") and not set(includes["arches"]) & ARCHES):
        return False
    return not (excludes.get("arches") and ARCHES <= set(excludes["arches"]))


def _dockers_rules_flat() -> list[dict]:
    docker_default = json.loads(DOCKER_DEFAULT_SECCOMP.read_text())
    return [{k: v for k, v in rule.items() if k not in ("includes", "excludes")}
            for rule in docker_default["syscalls"] if _applies_without_capabilities(rule)]


def _chromium_rules(profile: dict) -> list[dict]:
    return [rule for rule in profile["syscalls"] if rule.get("comment", "").startswith("chromium sandbox:")]


def test_the_profile_is_dockers_allowlist_plus_the_sandbox_rules() -> None:
    profile = json.loads(seccomp_profile("sandbox"))
    added = _chromium_rules(profile)
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO" and profile["defaultErrnoRet"] == 1  # refuse the rest
    assert profile["architectures"] == ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    assert [rule for rule in profile["syscalls"] if rule not in added] == _dockers_rules_flat()
    assert sorted({name for rule in added for name in rule["names"]}) == ["chroot", "clone", "unshare"]
    assert not any("includes" in rule or "excludes" in rule for rule in profile["syscalls"])


def test_what_docker_grants_only_with_capabilities_stays_refused() -> None:
    allowed = {name for rule in json.loads(BUNDLED_SECCOMP.read_text())["syscalls"]
               if rule["action"] == "SCMP_ACT_ALLOW" and "args" not in rule for name in rule["names"]}
    for refused in ("mount", "setns", "bpf", "kexec_load", "init_module", "add_key", "keyctl", "perf_event_open",
                    "get_mempolicy", "clone3", "unshare", "clone", "io_uring_setup", "userfaultfd"):
        assert refused not in allowed, refused


def test_namespaces_are_allowed_only_without_mount_uts_ipc_or_cgroup_flags() -> None:
    for rule in _chromium_rules(json.loads(BUNDLED_SECCOMP.read_text())):
        if rule["names"] == ["chroot"]:
            assert "args" not in rule
            continue
        (arg,) = rule["args"]
        assert arg["index"] == 0 and arg["op"] == "SCMP_CMP_MASKED_EQ" and arg["value"] == OTHER_NAMESPACES
        assert arg.get("valueTwo", 0) == 0
