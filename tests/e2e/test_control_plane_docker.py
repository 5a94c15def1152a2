"""The control plane end to end on the real engine: the gateway process (runtime `docker`) on the host, real
instance containers on a test network, the simulator container on that network as AI Studio; on SQLite and
on Postgres. Create/start/stop/delete, a gateway SIGKILLed and started again, a container killed from
outside, an orphan container."""

from __future__ import annotations

import uuid

import docker
import docker.errors
import pytest

from gateway.runtime.base import LABEL_INSTANCE_ID, LABEL_INSTANCE_NAME, LABEL_MANAGED_BY, MANAGED_BY_VALUE
from gateway.runtime.docker import LABEL_NAMESPACE
from tests.e2e.harness import (
    INSTANCE_IMAGE,
    GatewayProcess,
    container_of,
    fleet_containers,
    fleet_volumes,
    remove_namespace,
    started_at,
)
from tests.polling import wait_until
from tests.simulator.fixtures import control

pytestmark = pytest.mark.docker


def test_create_start_stop_delete(gateway: GatewayProcess, engine: docker.DockerClient) -> None:
    instance_id = gateway.create("e2e-实例")
    assert gateway.instance(instance_id)["status"] == "stopped"
    assert container_of(engine, gateway.namespace, instance_id) is None  # nothing runs before a start

    started = gateway.call("POST", f"/api/instances/{instance_id}/start")
    assert started["changed"] is True
    view = gateway.wait_running(instance_id)
    assert view["login_state"] == "logged_in"  # on the simulator, with nobody signing in
    container = container_of(engine, gateway.namespace, instance_id)
    assert container is not None and container.status == "running"
    assert view["handle"] == container.id
    assert container.labels[LABEL_INSTANCE_NAME] == "e2e-实例"
    assert list(container.attrs["NetworkSettings"]["Networks"]) == [gateway.network.network]
    assert [m["Name"] for m in container.attrs["Mounts"]] == [f"{gateway.namespace}data-{instance_id}"]
    record = control(gateway.network.control_url, "/_sim/record")
    assert record["page_loads_by_account"].get("anonymous", 0) >= 1  # its page came from the simulator

    again = gateway.call("POST", f"/api/instances/{instance_id}/start")  # idempotent
    assert again["changed"] is False and again["instance"]["status"] == "running"
    gateway.call("DELETE", f"/api/instances/{instance_id}", expect=409)  # running: refused, nothing changed
    assert container_of(engine, gateway.namespace, instance_id).status == "running"

    gateway.call("POST", f"/api/instances/{instance_id}/stop")
    gateway.wait_status(instance_id, "stopped")
    container.reload()
    assert container.status == "exited"  # stopped, not removed: its volume keeps the login
    assert [v.name for v in fleet_volumes(engine, gateway.namespace)] == [f"{gateway.namespace}data-{instance_id}"]

    gateway.call("DELETE", f"/api/instances/{instance_id}")
    gateway.call("GET", f"/api/instances/{instance_id}", expect=404)
    assert fleet_containers(engine, gateway.namespace) == []
    assert fleet_volumes(engine, gateway.namespace) == []


def labeled(engine: docker.DockerClient, namespace: str) -> docker.models.containers.Container:
    """A container (created, not started) with a gateway namespace's labels and an instance id no row has."""
    orphan_id = str(uuid.uuid4())
    return engine.containers.create(
        INSTANCE_IMAGE,
        name=f"{namespace}{orphan_id}",
        labels={
            LABEL_MANAGED_BY: MANAGED_BY_VALUE,
            LABEL_NAMESPACE: namespace,
            LABEL_INSTANCE_ID: orphan_id,
            LABEL_INSTANCE_NAME: "orphan",
        },
    )


def orphan_removed(
    gateway: GatewayProcess, engine: docker.DockerClient, orphan: docker.models.containers.Container
) -> None:
    wait_until(lambda: container_of(engine, gateway.namespace, orphan.labels[LABEL_INSTANCE_ID]) is None,
               timeout=30, what="the orphan removed")


def whole_passes(gateway: GatewayProcess, engine: docker.DockerClient, count: int) -> None:
    """Until `count` reconcile passes that began now have ended. A pass removes the orphans it lists as it begins,
    so the one that removes an orphan planted once the last is gone begins after the one that removed that ended."""
    for _ in range(count + 1):
        orphan_removed(gateway, engine, labeled(engine, gateway.namespace))


def test_gateway_killed_and_restarted_adopts_its_running_instances(
    gateway: GatewayProcess, engine: docker.DockerClient
) -> None:
    ids = [gateway.create(f"adopt-{n}") for n in range(3)]
    for instance_id in ids:
        gateway.call("POST", f"/api/instances/{instance_id}/start")
    for instance_id in ids:
        gateway.wait_running(instance_id)
    before = {c.id: started_at(c) for c in fleet_containers(engine, gateway.namespace)}
    assert len(before) == 3

    gateway.kill()
    assert gateway.process is not None and gateway.process.returncode == -9
    assert all(c.status == "running" for c in fleet_containers(engine, gateway.namespace))  # they outlive it

    gateway.start()
    # Adopted: each running row probed and found healthy by the new process, recorded as an event.
    wait_until(
        lambda: all(gateway.event_kinds(i).count("adopted") == 1 for i in ids),
        timeout=30, what="the 3 instances adopted",
    )
    whole_passes(gateway, engine, 2)  # passes that found the adopted instances as they should be: nothing to do
    after = {c.id: started_at(c) for c in fleet_containers(engine, gateway.namespace)}
    assert after == before  # the same 3 containers, none restarted, no duplicate, no orphan
    for instance_id in ids:
        view = gateway.instance(instance_id)
        assert (view["status"], view["login_state"], view["restart_count"]) == ("running", "logged_in", 0)
        kinds = gateway.event_kinds(instance_id)
        assert kinds.count("started") == 1 and "died" not in kinds


def test_container_killed_from_outside_is_restarted(gateway: GatewayProcess, engine: docker.DockerClient) -> None:
    instance_id = gateway.create("killed")
    gateway.call("POST", f"/api/instances/{instance_id}/start")
    gateway.wait_running(instance_id)
    first = container_of(engine, gateway.namespace, instance_id)
    volume = [m["Name"] for m in first.attrs["Mounts"]]

    first.kill()
    wait_until(lambda: "died" in gateway.event_kinds(instance_id), timeout=30, what="the reconciler to notice")
    view = wait_until(
        lambda: (v := gateway.instance(instance_id))["status"] == "running" and v["restart_count"] == 1 and v,
        timeout=120, what="the instance running again",
    )
    assert view["login_state"] == "logged_in"
    second = container_of(engine, gateway.namespace, instance_id)  # exactly one container for it
    assert second.status == "running" and view["handle"] == second.id
    assert [m["Name"] for m in second.attrs["Mounts"]] == volume  # same volume, same login
    kinds = gateway.event_kinds(instance_id)
    assert kinds.index("died") < kinds.index("restarting") < len(kinds) - 1 - kinds[::-1].index("ready")


def test_orphan_container_is_removed_and_other_namespaces_are_left_alone(
    gateway: GatewayProcess, engine: docker.DockerClient
) -> None:
    other_namespace = f"{gateway.namespace}other-"
    orphan = labeled(engine, gateway.namespace)  # the fleet's labels, but no row owns it
    neighbour = labeled(engine, other_namespace)  # another gateway's: not ours to touch
    try:
        orphan_removed(gateway, engine, orphan)
        with pytest.raises(docker.errors.NotFound):
            engine.containers.get(orphan.id)
        neighbour.reload()
        assert neighbour.status == "created"
        assert gateway.call("GET", "/api/instances")["total_count"] == 0  # and no row was made for it
    finally:
        remove_namespace(engine, other_namespace)
