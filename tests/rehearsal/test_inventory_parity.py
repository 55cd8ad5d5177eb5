"""The rehearsal inventory is production with other addresses, sizes and
secrets: any other difference must be listed here with its reason, so that
production cannot drift from what is rehearsed."""

from __future__ import annotations

import ipaddress

import pytest

from moodleops.inventory import InventoryError, load_inventory
from moodleops.rehearsal.spec import load_rehearsal

# Keys whose values may differ, each with why. Anything else must be equal.
ADDRESSES = {
    "moodle_wwwroot", "moodle_db_host", "moodle_db_read_host", "monitoring_sysadmin_emails", "monitoring_smtp_smarthost",
    "monitoring_smtp_from", "backup_s3_bucket", "backup_s3_prefix", "backup_export_smtp_host",
    "backup_export_mail_from", "backup_s3_endpoint_url",
}
SIZES = {
    "php_fpm_max_children", "postgresql_shared_buffers", "postgresql_max_connections",
    "backup_retention", "backup_part_size_mb", "backup_workers",
}
SECRETS = {"moodle_db_password", "moodle_db_ro_password", "moodle_admin_password", "moodle_plugin_secrets",
           "postgresql_replication_password", "backup_schedule_environment",
           # certificates: UT's PKI in production, self-signed in the rehearsal
           "tls_certificate_path", "tls_certificate_key_path", "tls_certificate_self_signed"}
# Facts of this machine, not of the platform: the environment's name, no internet
# (artifacts from the offline mirror), Debian 12's PHP 8.2 (production's 8.1 comes
# from a repository not reachable here), no NFS in this kernel (moodledata over sshfs).
# The export mail's relay is the operator's loopback test relay, and the alerts'
# a test sink on mon1's loopback: both without TLS.
MACHINE = {"moodleops_env", "moodle_artifact_source", "php_version", "moodle_allow_unsupported_php",
           "moodledata_protocol", "backup_export_smtp_starttls", "monitoring_smtp_require_tls"}
# Only the rehearsal has them: where its generated key, known_hosts, secrets and
# lb1's self-signed certificate live (production: the operators' own SSH setup,
# vault, UT's PKI trusted by the system).
REHEARSAL_ONLY = {
    "moodle_artifact_mirror", "moodleops_rehearsal_dir", "ansible_ssh_private_key_file",
    "ansible_ssh_common_args", "moodleops_local_secrets_dir", "moodleops_secrets_dir", "moodle_ca_bundle",
}
# A rehearsal lives for one test run: its backup jobs are installed on the job host
# but run on demand (manual), where production's systemd timers would take the
# platform lock under the tests at 01:30.
LIFETIME = {"backup_schedule_runner"}
MAY_DIFFER = ADDRESSES | SIZES | SECRETS | MACHINE | LIFETIME


@pytest.fixture(scope="module")
def prod():  # type: ignore[no-untyped-def]
    return load_inventory("production")


@pytest.fixture(scope="module")
def rehearsal():  # type: ignore[no-untyped-def]
    return load_inventory("rehearsal")


def test_same_variables(prod, rehearsal) -> None:  # type: ignore[no-untyped-def]
    assert set(rehearsal.vars) - REHEARSAL_ONLY == set(prod.vars), \
        "group_vars keys differ: add the key to both inventories (or list it above with its reason)"


def test_values_differ_only_where_allowed(prod, rehearsal) -> None:  # type: ignore[no-untyped-def]
    differ = {k for k in prod.vars if prod.vars[k] != rehearsal.vars.get(k)}
    assert differ - MAY_DIFFER == set(), f"values that must be equal to production's: {sorted(differ - MAY_DIFFER)}"
    # Not a list of excuses: each allowed key really names something rehearsal-specific.
    assert differ >= SECRETS - {"moodle_plugin_secrets"}
    assert rehearsal.vars["moodleops_env"] == "rehearsal"


def test_same_groups_and_connection(prod, rehearsal) -> None:  # type: ignore[no-untyped-def]
    def groups(inv):  # type: ignore[no-untyped-def]
        return {g for h in inv.hosts for g in h.groups}
    assert groups(rehearsal) == groups(prod)
    for group in groups(prod):
        assert rehearsal.group(group), group
        # One host per role at least; the web tier may be smaller (a size).
        if group != "web":
            assert len(rehearsal.group(group)) == len(prod.group(group)), group
    assert 2 <= len(rehearsal.group("web")) <= len(prod.group("web"))
    # Every host in exactly one role, as in production.
    for inv in (prod, rehearsal):
        assert all(len(h.groups) == 1 for h in inv.hosts), inv.env


def test_every_rehearsal_address_is_a_container_of_its_network(rehearsal) -> None:  # type: ignore[no-untyped-def]
    spec = load_rehearsal(rehearsal)
    addresses = [h.address for h in spec.hosts]
    assert len(set(addresses)) == len(addresses) == len(rehearsal.hosts)
    assert all(ipaddress.ip_address(a) in spec.network for a in addresses)
    assert spec.gateway not in addresses
    # What the platform is told to reach is one of those containers.
    lb = rehearsal.group("loadbalancer")[0]
    assert rehearsal.vars["moodle_wwwroot"] == f"https://{lb.address}"
    assert rehearsal.vars["moodle_db_host"] == rehearsal.group("db_primary")[0].address
    assert str(rehearsal.vars["moodleops_rehearsal_dir"]) == str(spec.state_dir)


def test_production_has_no_rehearsal(prod) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InventoryError) as info:
        load_rehearsal(prod)
    assert "inventory/production/rehearsal.yml" in str(info.value)
