"""The pyinfra deploys reach a host as the playbooks do: the same user, key and
pinned known_hosts (computed by Ansible), the toolkit's launcher with sudo; an
SSH option pyinfra cannot honour is refused, not dropped."""

from __future__ import annotations

import json

import pytest

from moodleops.inventory import load_inventory
from moodleops.platform.host_access import PyinfraHostError, _ssh_options, main, pyinfra_host


def test_a_local_web_node_is_pyinfra_local() -> None:
    inv = load_inventory("local")
    assert pyinfra_host(inv, inv.group("web")[0]) == ("@local", {})


def test_a_production_web_node_is_reached_by_name_with_sudo_and_the_launcher() -> None:
    inv = load_inventory("production")
    first = inv.group("web")[0]
    name, data = pyinfra_host(inv, first)
    assert name == first.name and data["ssh_hostname"] == first.address
    assert data["ssh_user"] == "moodleops" and data["toolkit_sudo"] is True
    assert data["moodleops_bin"] == "/usr/local/sbin/moodleops" and data["host_inventory"] == ""


def test_the_rehearsal_ssh_options_become_pyinfra_data() -> None:
    assert _ssh_options("web1", "-o IdentitiesOnly=yes -o StrictHostKeyChecking=yes "
                                "-oUserKnownHostsFile=/state/known_hosts") == {
        "ssh_strict_host_key_checking": "yes", "ssh_known_hosts_file": "/state/known_hosts"}
    assert _ssh_options("web1", "") == {}


@pytest.mark.parametrize("args", ["-o ProxyJump=bastion", "-J bastion", "-o", "-o StrictHostKeyChecking"])
def test_an_ssh_option_pyinfra_cannot_honour_is_refused(args: str) -> None:
    with pytest.raises(PyinfraHostError, match="web1: ansible_ssh_common_args .* has no pyinfra equivalent"):
        _ssh_options("web1", args)


def test_the_inventory_file_gets_json_or_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["production", "web"]) == 0
    hosts = json.loads(capsys.readouterr().out)
    assert [name for name, _data in hosts] == [h.name for h in load_inventory("production").group("web")]
    assert main(["nope", "web"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "env: 'nope' is not valid" in err


def test_a_rehearsal_load_generator_is_reached_as_ansible_and_runs_the_toolkits_python() -> None:
    """`loadtest run --workers` starts workers there with the user, key and
    pinned known_hosts Ansible uses, as the toolkit's virtualenv Python."""
    from moodleops.loadtests.ssh import WorkerHost

    inv = load_inventory("rehearsal")
    gen = inv.group("loadgen")[0]
    w = WorkerHost.of_inventory(inv, gen)
    assert w.ssh[0] == "ssh" and w.ssh[-1] == gen.address
    assert "BatchMode=yes" in w.ssh and "StrictHostKeyChecking=yes" in w.ssh
    assert w.user == "moodleops" and w.known_hosts.endswith("known_hosts") and w.identity
    assert any(a == f"UserKnownHostsFile={w.known_hosts}" for a in w.ssh)
    assert w.python == "/opt/moodleops/venv/bin/python"


def test_a_streamed_command_passes_its_progress_on_and_keeps_its_own_lines_for_a_failure(
        capfd: pytest.CaptureFixture[str]) -> None:
    from moodleops.platform.host_access import _streamed

    script = "echo report; echo 'progress 50%' >&2; echo 'moodleops: mirror: a note' >&2; exit {}"
    assert _streamed(["sh", "-c", script.format(0)], 10) == (0, "")
    out, err = capfd.readouterr()
    # Success: everything reaches the operator, the command's own lines after its progress.
    assert out == "report\n" and err == "progress 50%\nmoodleops: mirror: a note\n", (out, err)
    assert _streamed(["sh", "-c", script.format(3)], 10) == (3, "moodleops: mirror: a note\n")
    out, err = capfd.readouterr()
    # Failure: the progress as it came; the command's own line is the caller's to report, once.
    assert out == "report\n" and err == "progress 50%\n", (out, err)
