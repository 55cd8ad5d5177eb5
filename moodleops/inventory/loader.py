"""Build a validated Inventory from inventory/{platform,schools,moodle}.yml and inventory/<env>/.

Validation is eager and complete: a value the toolkit would trip over later
(a typo in a school entry, a plugin that needs a newer core, a host group with
nobody in it) stops here with an InventoryError that names file, key and value.
"""

from __future__ import annotations

import os
import re
from decimal import Decimal
from pathlib import Path

from moodleops import REPO_ROOT
from moodleops.inventory._reader import MISSING, Node, display_path, load_yaml
from moodleops.inventory.errors import InventoryError
from moodleops.inventory.model import (
    AccountRules,
    Host,
    Inventory,
    MonthDay,
    Pin,
    Platform,
    School,
    WatchRules,
)
from moodleops.inventory.settings import read_settings

# The agreement hosts Moodle 4.1 (LTS). Moving to another branch is a contract
# and migration decision, so it is a reviewed code change, not an inventory edit.
CONTRACT_BRANCH = 401

# Groups the playbooks target; a role with no host would silently not be deployed.
REQUIRED_GROUPS = ("web", "db_primary", "moodledata", "monitoring")

MEMBERSHIP_METHODS = ("cohort", "profile_field", "category_enrolments")

# Where Moodle expects each plugin type, relative to its root (lib/components.json).
PLUGIN_TYPE_DIRS = {
    "mod": "mod",
    "block": "blocks",
    "qtype": "question/type",
    "qbehaviour": "question/behaviour",
    "format": "course/format",
    "report": "report",
    "plagiarism": "plagiarism",
    "local": "local",
    "tool": "admin/tool",
    "auth": "auth",
    "enrol": "enrol",
    "filter": "filter",
    "theme": "theme",
    "atto": "lib/editor/atto/plugins",
    "assignsubmission": "mod/assign/submission",
}

SCHOOL_KEYS = ("code", "name", "category_idnumber", "cohort_idnumber", "students", "trainers",
               "referents", "alert_bytes")
CORE_KEYS = ("version", "release", "branch", "file", "sha256", "url")
PLUGIN_KEYS = ("component", "contract_name", "version", "release", "install_path", "requires",
               "dependencies", "file", "sha256", "url", "secrets")

SCHOOL_CODE = re.compile(r"^[a-z][a-z0-9_]{1,31}$")
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s.]+$")
VERSION = re.compile(r"^\d{10}(\.\d{1,2})?$")
VERSION_DESC = "a Moodle version YYYYMMDDXX[.XX], e.g. '2022112811.00'"
FRANKENSTYLE = re.compile(r"^[a-z]+_[a-z0-9_]+$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
FILE_NAME = re.compile(r"^(?!\.\.?$)[^/\\\s]+$")
HTTPS_URL = re.compile(r"^https://\S+$")
SECRET_NAME = re.compile(r"^[a-z][a-z0-9_]*/[a-z0-9_]+$")
# Moodle's version.php may say a dependency accepts any version.
ANY_VERSION = "ANY_VERSION"
# Names another moodle.yml to use instead of the inventory's (validated the
# same way): the start point of an upgrade rehearsal, a one-off trial of pins.
PINS_ENV = "MOODLEOPS_PINS"


def load_inventory(env: str = "local", root: Path | None = None) -> Inventory:
    """Load and validate the inventory for `env`.

    `env` is a directory name under `root` (default REPO_ROOT/inventory), or a
    path to such a directory (it contains a separator, or is . or ..); with a
    path and no `root`, the shared files are read from the directory's parent.
    """
    root, env_dir = _resolve_env(env, root)
    platform = _read_platform(root / "platform.yml")
    schools = _read_schools(root / "schools.yml", platform)
    core, plugins = _read_moodle(Path(os.environ[PINS_ENV]).resolve() if os.environ.get(PINS_ENV)
                                 else root / "moodle.yml")
    hosts = _read_hosts(env_dir / "hosts.yml")
    raw = _read_vars(env_dir)
    settings = read_settings(display_path(env_dir / "group_vars" / "all.yml"), env_dir, raw)
    return Inventory(root=root, env=env_dir.name, env_dir=env_dir, platform=platform, schools=schools,
                     core=core, plugins=plugins, hosts=hosts, settings=settings, vars=raw)


# -- environment ---------------------------------------------------------------

def _resolve_env(env: str, root: Path | None) -> tuple[Path, Path]:
    is_path = "/" in env or os.sep in env or env in (".", "..")
    if is_path:
        env_dir = Path(env).resolve()
        root = Path(root) if root is not None else env_dir.parent
    else:
        root = Path(root) if root is not None else REPO_ROOT / "inventory"
        env_dir = root / env
    if not env or not (env_dir / "hosts.yml").is_file():
        available = sorted(p.parent.name for p in root.glob("*/hosts.yml"))
        raise InventoryError(display_path(root), "env", env,
                             "an inventory directory holding hosts.yml; available: "
                             + (", ".join(available) or "none"))
    return root, env_dir


def _read_vars(env_dir: Path) -> dict[str, object]:
    # Raw on purpose: besides the settings (read_settings), values are role
    # knobs and Jinja templates that only Ansible renders.
    path = env_dir / "group_vars" / "all.yml"
    if not path.is_file():
        return {}
    node = Node(display_path(path), "", load_yaml(path))
    return {} if node.value is None else dict(node.mapping())


# -- platform.yml --------------------------------------------------------------

def _read_platform(path: Path) -> Platform:
    doc = Node(display_path(path), "", load_yaml(path))

    agreement = doc.get("agreement")
    start = agreement.get("start").date()
    end_node = agreement.get("end")
    end = end_node.date()
    if end <= start:
        end_node.fail(f"a date after agreement.start ({start})")

    storage = doc.get("storage")
    pool = storage.get("pool_bytes").integer(minimum=1)
    default_alert = storage.get("default_school_alert_bytes").integer(
        1, pool, allowed=f"an integer > 0 and <= storage.pool_bytes ({pool})")
    warning = storage.get("pool_warning_ratio").ratio()
    critical_node = storage.get("pool_critical_ratio")
    critical = critical_node.ratio()
    if critical <= warning:
        critical_node.fail(f"a ratio above storage.pool_warning_ratio ({warning}) and below 1")

    billing = doc.get("billing")
    rate_node = billing.get("rate_eur_per_student")
    rate = rate_node.decimal("an amount in euros > 0")
    if rate <= 0:
        rate_node.fail("an amount in euros > 0")

    membership = doc.get("school_membership")
    method_node = membership.get("method")
    method = method_node.text()
    if method not in MEMBERSHIP_METHODS:
        method_node.fail(f"one of: {', '.join(MEMBERSHIP_METHODS)}")
    field_node = membership.get("profile_field")
    profile_field = field_node.text() if method == "profile_field" else field_node.text(default="")

    return Platform(
        agreement_start=start,
        agreement_end=end,
        pool_bytes=pool,
        default_school_alert_bytes=default_alert,
        pool_warning_ratio=warning,
        pool_critical_ratio=critical,
        rate_eur_per_student=rate,
        billing_count_due=billing.get("count_due").month_day(),
        billing_campaign_end=billing.get("campaign_end").month_day(),
        accounts=_read_accounts(doc.get("accounts")),
        membership_method=method,
        membership_profile_field=profile_field,
        population_as_of=doc.get("population").get("as_of").date(),
        watch=_read_watch(doc.get("watch")),
    )


WATCH_KEYS = ("mass_mailing_per_hour", "failed_logins_burst_10m", "cron_stuck_seconds", "pin_grace_days",
              "top_senders", "online_window_seconds", "watched_roles")
ROLE_SHORTNAME = re.compile(r"^[a-z][a-z0-9_]*$")


def _read_watch(watch: Node) -> WatchRules:
    watch.mapping(WATCH_KEYS, "watch")
    roles = tuple(n.text(ROLE_SHORTNAME, "a Moodle role shortname ([a-z][a-z0-9_]*)")
                  for n in watch.get("watched_roles").seq())
    return WatchRules(
        mass_mailing_per_hour=watch.get("mass_mailing_per_hour").integer(minimum=1),
        failed_logins_burst_10m=watch.get("failed_logins_burst_10m").integer(minimum=1),
        cron_stuck_seconds=watch.get("cron_stuck_seconds").integer(minimum=60),
        pin_grace_days=watch.get("pin_grace_days").integer(minimum=0),
        # Each top sender is a series per school: keep the label set small.
        top_senders=watch.get("top_senders").integer(0, 20),
        online_window_seconds=watch.get("online_window_seconds").integer(minimum=60),
        watched_roles=roles,
    )


#: Where an account's type can be read (accounts.account_type_source).
ACCOUNT_TYPE_SOURCES = ("profile_field", "department", "institution", "auth", "idnumber")


def _read_accounts(accounts: Node) -> AccountRules:
    pattern_node = accounts.get("login_pattern")
    pattern = pattern_node.text()
    try:
        re.compile(pattern)
    except re.error as exc:
        pattern_node.fail(f"a valid regular expression ({exc})")

    referents = accounts.get("referents_per_school")
    low = referents.get("min").integer(minimum=0)
    high = referents.get("max").integer(
        minimum=max(low, 1), allowed=f"an integer >= 1 and >= referents_per_school.min ({low})")

    hosted = _names(accounts.get("hosted_types"))
    students_node = accounts.get("student_types")
    students = _names(students_node)
    if set(hosted) & set(students):
        students_node.fail("account types that are not also in accounts.hosted_types")

    source_node = accounts.get("account_type_source")
    source = source_node.text(default="profile_field")
    if source not in ACCOUNT_TYPE_SOURCES:
        source_node.fail(f"one of: {', '.join(ACCOUNT_TYPE_SOURCES)}")
    hosted_pattern_node = accounts.get("account_type_hosted_pattern")
    hosted_pattern = hosted_pattern_node.text(default="" if source != "idnumber" else None)
    if hosted_pattern:
        try:
            re.compile(hosted_pattern)
        except re.error as exc:
            hosted_pattern_node.fail(f"a valid regular expression ({exc})")

    return AccountRules(
        login_pattern=pattern,
        hosted_expiry=accounts.get("hosted_expiry").month_day(),
        renewal_window=_window(accounts.get("renewal_window")),
        trainer_renewal_window=_window(accounts.get("trainer_renewal_window")),
        new_account_sla_days=accounts.get("new_account_sla_days").integer(minimum=1),
        referents_min=low,
        referents_max=high,
        account_type_field=accounts.get("account_type_field").text(),
        hosted_types=hosted,
        student_types=students,
        account_type_source=source,
        hosted_pattern=hosted_pattern,
    )


def _window(node: Node) -> tuple[MonthDay, MonthDay]:
    start = node.get("start").month_day()
    end_node = node.get("end")
    end = end_node.month_day()
    if (end.month, end.day) < (start.month, start.day):
        end_node.fail(f"a month-day on or after {node.key}.start ({start.month:02d}-{start.day:02d})")
    return start, end


def _names(node: Node) -> tuple[str, ...]:
    return tuple(item.text() for item in node.seq(min_len=1))


def _unique(node: Node, value: str, seen: dict[str, str]) -> None:
    if value in seen:
        node.fail(f"unique; already used at {seen[value]}")
    seen[value] = node.key


# -- schools.yml ---------------------------------------------------------------

def _read_schools(path: Path, platform: Platform) -> tuple[School, ...]:
    doc = Node(display_path(path), "", load_yaml(path))
    doc.mapping(("schools",))
    codes: dict[str, str] = {}
    categories: dict[str, str] = {}
    cohorts: dict[str, str] = {}
    schools = []
    for entry in doc.get("schools").seq(min_len=1):
        entry.mapping(SCHOOL_KEYS, what="a school entry")
        code_node = entry.get("code")
        code = code_node.text(SCHOOL_CODE, "a lowercase code matching ^[a-z][a-z0-9_]{1,31}$")
        _unique(code_node, code, codes)
        category_node = entry.get("category_idnumber")
        category = category_node.text()
        _unique(category_node, category, categories)
        cohort_node = entry.get("cohort_idnumber")
        cohort = cohort_node.text(default=category)
        _unique(cohort_node, cohort, cohorts)
        schools.append(School(
            code=code,
            name=entry.get("name").text(),
            category_idnumber=category,
            cohort_idnumber=cohort,
            students=entry.get("students").integer(minimum=0),
            trainers=entry.get("trainers").integer(minimum=0),
            referents=_referents(entry.get("referents"), platform.accounts),
            alert_bytes=entry.get("alert_bytes").integer(
                1, platform.pool_bytes, default=platform.default_school_alert_bytes,
                allowed=f"an integer > 0 and <= storage.pool_bytes ({platform.pool_bytes}); "
                        "a threshold above the pool can never fire"),
        ))
    return tuple(schools)


def _referents(node: Node, rules: AccountRules) -> tuple[str, ...]:
    items = node.seq()
    if not rules.referents_min <= len(items) <= rules.referents_max:
        node.fail(f"{rules.referents_min} to {rules.referents_max} addresses "
                  "(accounts.referents_per_school in platform.yml)")
    seen: dict[str, str] = {}
    for item in items:
        _unique(item, item.text(EMAIL, "an e-mail address (role mailbox)").lower(), seen)
    return tuple(item.value for item in items)


# -- moodle.yml ----------------------------------------------------------------

def _read_moodle(path: Path) -> tuple[Pin, tuple[Pin, ...]]:
    doc = Node(display_path(path), "", load_yaml(path))
    doc.mapping(("core", "plugins"))
    core = _read_core(doc.get("core"))
    files: dict[str, str] = {core.file: "core.file"}
    components: dict[str, str] = {}
    read = [(_read_plugin(node, core, components, files), node) for node in doc.get("plugins").seq()]
    pinned = {pin.component: pin for pin, _ in read}
    for pin, node in read:
        for dep, needed in pin.dependencies.items():
            have = pinned.get(dep)
            # Dependencies not pinned here are core plugins shipped with Moodle.
            if have is not None and have.version < needed:
                dep_node = node.get("dependencies").get(dep)
                dep_node.fail(f"plugin {pin.component} needs {dep} >= {dep_node.value} "
                              f"but the pinned {dep} is {have.version_text}")
    return core, tuple(pin for pin, _ in read)


def _archive(node: Node, files: dict[str, str] | None = None) -> tuple[str, str, str]:
    file_node = node.get("file")
    file = file_node.text(FILE_NAME, "a file name in the mirror, without directory")
    if files is not None:
        _unique(file_node, file, files)
    sha = node.get("sha256").text(SHA256, "bad checksum: a sha256 is 64 lowercase hex digits")
    url = node.get("url").text(HTTPS_URL, "an https:// URL")
    return file, sha, url


def _read_core(node: Node) -> Pin:
    node.mapping(CORE_KEYS, what="core")
    branch_node = node.get("branch")
    branch = branch_node.integer(allowed=f"the Moodle branch number, {CONTRACT_BRANCH}")
    if branch != CONTRACT_BRANCH:
        branch_node.fail(f"{CONTRACT_BRANCH}: the agreement hosts Moodle 4.1; another branch is "
                         "a major upgrade, not a patch")
    version, version_text = node.get("version").version(VERSION, VERSION_DESC)
    file, sha, url = _archive(node)
    return Pin(component="core", version=version, version_text=version_text,
               release=node.get("release").text(default=""), install_path=".", requires=None,
               dependencies={}, file=file, sha256=sha, url=url)


def _read_plugin(node: Node, core: Pin, components: dict[str, str], files: dict[str, str]) -> Pin:
    node.mapping(PLUGIN_KEYS, what="a plugin entry")
    comp_node = node.get("component")
    component = comp_node.text(FRANKENSTYLE, "a frankenstyle component, type_name, e.g. mod_choicegroup")
    _unique(comp_node, component, components)
    ptype, name = component.split("_", 1)
    if ptype not in PLUGIN_TYPE_DIRS:
        comp_node.fail(f"a known plugin type; allowed types: {', '.join(sorted(PLUGIN_TYPE_DIRS))}")
    expected = f"{PLUGIN_TYPE_DIRS[ptype]}/{name}"
    install_node = node.get("install_path")
    if install_node.text() != expected:
        install_node.fail(f"{expected}, where Moodle looks for {component}")

    version, version_text = node.get("version").version(VERSION, VERSION_DESC)
    requires_node = node.get("requires")
    requires = None
    if not requires_node.missing:
        requires, requires_text = requires_node.version(VERSION, VERSION_DESC)
        if requires > core.version:
            requires_node.fail(f"plugin {component} requires core >= {requires_text} "
                               f"but the pinned core is {core.version_text}")
    file, sha, url = _archive(node, files)
    return Pin(component=component, version=version, version_text=version_text,
               release=node.get("release").text(default=""), install_path=expected,
               requires=requires, dependencies=_dependencies(node.get("dependencies")),
               file=file, sha256=sha, url=url,
               contract_name=node.get("contract_name").text(default=""),
               secrets=_secrets(node.get("secrets")))


def _dependencies(node: Node) -> dict[str, Decimal]:
    if node.missing:
        return {}
    deps = {}
    for name, dep in node.items():
        if not FRANKENSTYLE.match(name):
            Node(dep.file, dep.key, name).fail("a frankenstyle component, type_name")
        if dep.value == ANY_VERSION:
            deps[name] = Decimal(0)
        else:
            deps[name] = dep.version(VERSION, f"{VERSION_DESC}, or {ANY_VERSION}")[0]
    return deps


def _secrets(node: Node) -> tuple[str, ...]:
    if node.missing:
        return ()
    seen: dict[str, str] = {}
    for item in node.seq():
        _unique(item, item.text(SECRET_NAME, "a Moodle setting name 'plugin/setting'"), seen)
    return tuple(seen)


# -- <env>/hosts.yml -----------------------------------------------------------

def _read_hosts(path: Path) -> tuple[Host, ...]:
    """Read an Ansible YAML inventory: groups with hosts and nested children.

    A host belongs to the group that lists it and to every group above it, as
    in Ansible. Group vars are ignored; only a host's own ansible_host counts.
    """
    doc = Node(display_path(path), "", load_yaml(path))
    # dicts as ordered sets: hosts and their groups keep the order of the file.
    groups: dict[str, dict[str, None]] = {}
    addresses: dict[str, tuple[str, str]] = {}   # host -> (ansible_host, key where it is set)
    reach: dict[str, dict[str, object]] = {}      # host -> ansible_port / ansible_connection
    defined: set[str] = set()

    def walk(group: str, node: Node, above: tuple[str, ...]) -> None:
        if group in above:
            node.fail(f"a group that does not contain itself (via {' > '.join(above)})")
        defined.add(group)
        if node.value is None:
            return
        node.mapping(("hosts", "children", "vars"), what=f"group {group}")
        chain = (*above, group)
        for name, host in _entries(node.get("hosts")):
            _add_host(name, host, chain, groups, addresses, reach)
        for child, child_node in _entries(node.get("children")):
            walk(child, child_node, chain)

    for group, node in doc.items():
        walk(group, node, () if group == "all" else ("all",))

    for group in REQUIRED_GROUPS:
        if not any(group in member_of for member_of in groups.values()):
            Node(doc.file, f"all.children.{group}.hosts", None if group in defined else MISSING).fail(
                "at least one host; the playbooks need the groups " + ", ".join(REQUIRED_GROUPS))

    return tuple(
        Host(name=name, address=addresses[name][0] if name in addresses else name,
             groups=tuple(g for g in member_of if g != "all"),
             port=reach.get(name, {}).get("port"),          # type: ignore[arg-type]
             connection=str(reach.get(name, {}).get("connection", "")))
        for name, member_of in groups.items()
    )


def _entries(node: Node) -> list[tuple[str, Node]]:
    # `hosts:` or `children:` left empty is legal in Ansible and means none.
    return [] if node.missing or node.value is None else node.items()


def _add_host(name: str, node: Node, chain: tuple[str, ...], groups: dict[str, dict[str, None]],
              addresses: dict[str, tuple[str, str]], reach: dict[str, dict[str, object]]) -> None:
    if "[" in name:
        Node(node.file, node.key, name).fail("a single host name; host ranges are not supported")
    groups.setdefault(name, {}).update(dict.fromkeys(chain))
    if node.value is None:
        return
    # How SSH reaches the host: the fault lines name host:port, and a loopback host
    # the inventory reaches over SSH (a test's sshd) is treated as remote.
    port_node = node.get("ansible_port")
    if not port_node.missing:
        reach.setdefault(name, {})["port"] = port_node.integer(1, 65535)
    conn_node = node.get("ansible_connection")
    if not conn_node.missing:
        reach.setdefault(name, {})["connection"] = conn_node.text()
    address_node = node.get("ansible_host")
    if address_node.missing:
        return
    address = address_node.text()
    previous = addresses.get(name)
    if previous is not None and previous[0] != address:
        address_node.fail(f"the same ansible_host as {previous[1]} ({previous[0]})")
    addresses[name] = (address, address_node.key)
