#!/usr/bin/python
# GNU General Public License v3.0+
"""Ansible module: assemble an immutable Moodle release directory from pinned archives."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: moodle_release
short_description: Build a versioned Moodle release directory (core + pinned plugins)
description:
  - Verifies the sha256 of every archive before unpacking anything.
  - Unpacks Moodle core, then each plugin into its install path, into a
    temporary directory that is renamed into place only when complete, so a
    failed run never leaves a half-built release behind.
  - The release name is derived from the pins, so the same pins always give
    the same directory and a second run changes nothing.
  - Checks that each plugin's version.php declares the pinned component and version,
    and returns the core version each plugin requires, read from that same
    version.php (what the archive itself says, not the inventory).
  - In check mode, still downloads and verifies every archive (what a real run
    would use) and reads the plugins' version.php from the archives, but builds nothing.
  - Optionally lifts Moodle 4.1's PHP 8.2 environment restriction (test stacks
    only), and records that it did in the release marker.
options:
  releases_dir: {description: Directory holding the release directories., required: true, type: path}
  core: {description: "Core pin: version, file, sha256, url.", required: true, type: dict}
  plugins: {description: "Plugin pins: component, version, install_path, file, sha256, url.", type: list, elements: dict, default: []}
  source: {description: Where archives come from., choices: [mirror, upstream], default: mirror, type: str}
  mirror: {description: Directory holding the archives (source=mirror)., type: path}
  download_dir: {description: Cache for downloaded archives (source=upstream)., type: path, default: /var/cache/moodleops/artifacts}
  allow_unsupported_php: {description: Remove the PHP 8.2 restriction from admin/environment.xml., type: bool, default: false}
"""

RETURN = r"""
path: {description: The release directory., type: str, returned: always}
name: {description: The release name., type: str, returned: always}
requires: {description: "component -> core version its version.php requires (null: none declared).", type: dict, returned: always}
"""

import hashlib
import json
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.request
import zipfile

from ansible.module_utils.basic import AnsibleModule

MARKER = ".moodleops-release.json"
PHP82_RESTRICTION = re.compile(
    r'\s*<RESTRICT function="restrict_php_version_82" message="unsupportedphpversion82" />'
)


class ReleaseError(Exception):
    pass


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def release_name(core: dict, plugins: list, allow_unsupported_php: bool) -> str:
    """Same pins (and override) -> same name; any change -> a new directory."""
    fingerprint = hashlib.sha256()
    for pin in [core] + sorted(plugins, key=lambda p: p["component"]):
        fingerprint.update(f"{pin.get('component', 'core')}={pin['sha256']};".encode())
    fingerprint.update(f"php-override={allow_unsupported_php}".encode())
    return f"{core['version']}-{fingerprint.hexdigest()[:12]}"


def fetch(pin: dict, source: str, mirror: str | None, download_dir: str) -> str:
    """Return a local path to the pinned archive, verified against its sha256."""
    if source == "mirror":
        if not mirror:
            raise ReleaseError("source=mirror needs the mirror directory (moodle_artifact_mirror)")
        path = os.path.join(mirror, pin["file"])
        if not os.path.isfile(path):
            raise ReleaseError(f"{pin.get('component', 'core')}: {pin['file']} is not in the mirror {mirror}")
    else:
        os.makedirs(download_dir, exist_ok=True)
        path = os.path.join(download_dir, pin["file"])
        if not os.path.isfile(path) or sha256_of(path) != pin["sha256"]:
            partial = path + ".part"
            with urllib.request.urlopen(pin["url"], timeout=120) as resp, open(partial, "wb") as out:
                shutil.copyfileobj(resp, out)
            os.replace(partial, path)
    actual = sha256_of(path)
    if actual != pin["sha256"]:
        raise ReleaseError(
            f"{pin.get('component', 'core')}: sha256 of {path} is {actual}, the inventory pins {pin['sha256']}"
        )
    return path


def single_top_dir(root: str) -> str:
    entries = [e for e in os.listdir(root) if e not in ("__MACOSX",)]
    if len(entries) != 1 or not os.path.isdir(os.path.join(root, entries[0])):
        raise ReleaseError(f"archive must hold a single top folder, found: {sorted(entries)[:5]}")
    return os.path.join(root, entries[0])


def unpack(archive: str, workdir: str) -> str:
    """Unpack into workdir and return the archive's single top folder."""
    target = tempfile.mkdtemp(dir=workdir)
    if archive.endswith((".tgz", ".tar.gz")):
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(target, filter="data")
            else:  # Python < 3.11.4 (Debian 12's 3.11.2): refuse what the data filter would
                for member in tar.getmembers():
                    if member.name.startswith("/") or ".." in member.name.split("/") or member.isdev():
                        raise ReleaseError(f"{archive}: unsafe member {member.name!r}")
                    if member.issym() and (member.linkname.startswith("/") or ".." in member.linkname.split("/")):
                        raise ReleaseError(f"{archive}: unsafe link {member.name!r} -> {member.linkname!r}")
                tar.extractall(target)
    elif archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if member.startswith("/") or ".." in member.split("/"):
                    raise ReleaseError(f"{archive}: unsafe path {member!r}")
            zf.extractall(target)
    else:
        raise ReleaseError(f"{archive}: unknown archive type (allowed: .tgz, .tar.gz, .zip)")
    return single_top_dir(target)


def normalise_modes(root: str) -> None:
    # Code is owned by root and read-only for the web server: a compromised PHP
    # process must not be able to rewrite Moodle.
    for dirpath, dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)


def read_version_php(plugin_dir: str, pin: dict) -> str:
    try:
        with open(os.path.join(plugin_dir, "version.php"), encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        raise ReleaseError(f"{pin['component']}: {pin['file']} has no version.php")


def archive_version_php(archive: str, pin: dict) -> str:
    """<top folder>/version.php read straight from the archive, unpacking nothing."""
    if archive.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            tops = {n.split("/", 1)[0] for n in names if n.split("/", 1)[0] != "__MACOSX"}
            wanted = [f"{t}/version.php" for t in tops if f"{t}/version.php" in names]
            if len(tops) == 1 and wanted:
                return zf.read(wanted[0]).decode("utf-8", errors="replace")
    elif archive.endswith((".tgz", ".tar.gz")):
        with tarfile.open(archive) as tar:
            for member in tar:
                parts = member.name.lstrip("./").split("/")
                if len(parts) == 2 and parts[1] == "version.php" and member.isfile():
                    fh = tar.extractfile(member)
                    if fh is not None:
                        return fh.read().decode("utf-8", errors="replace")
    raise ReleaseError(f"{pin['component']}: {pin['file']} has no <folder>/version.php")


def plugin_requires(text: str) -> str | None:
    found = re.search(r"\$plugin->requires\s*=\s*([0-9.]+)", text)
    return found.group(1) if found else None


def check_plugin_version(plugin_dir: str, pin: dict) -> None:
    check_version_text(read_version_php(plugin_dir, pin), pin)


def check_version_text(text: str, pin: dict) -> None:
    component = re.search(r"\$plugin->component\s*=\s*['\"]([a-z0-9_]+)['\"]", text)
    version = re.search(r"\$plugin->version\s*=\s*([0-9.]+)", text)
    if component and component.group(1) != pin["component"]:
        raise ReleaseError(f"{pin['file']} declares component {component.group(1)}, pinned as {pin['component']}")
    if not version or float(version.group(1)) != float(pin["version"]):
        found = version.group(1) if version else "none"
        raise ReleaseError(f"{pin['component']}: version.php says {found}, the inventory pins {pin['version']}")


def lift_php82_restriction(release_dir: str) -> str:
    env_xml = os.path.join(release_dir, "admin", "environment.xml")
    with open(env_xml, encoding="utf-8") as fh:
        text = fh.read()
    start = text.index('<MOODLE version="4.1"')
    end = text.index("</MOODLE>", start)
    block, count = PHP82_RESTRICTION.subn("", text[start:end])
    if count > 1:
        raise ReleaseError("admin/environment.xml: more than one PHP 8.2 restriction in the 4.1 block")
    if count == 0:  # early 4.1.x releases did not restrict 8.2 yet: nothing to lift
        return "not needed: this core does not restrict PHP 8.2"
    with open(env_xml, "w", encoding="utf-8") as fh:
        fh.write(text[:start] + block + text[end:])
    return "restrict_php_version_82 removed from admin/environment.xml"


def build(params: dict, dest: str, name: str) -> dict:
    releases_dir = params["releases_dir"]
    core, plugins = params["core"], params["plugins"]
    archives = {"core": fetch(core, params["source"], params["mirror"], params["download_dir"])}
    for pin in plugins:
        archives[pin["component"]] = fetch(pin, params["source"], params["mirror"], params["download_dir"])

    work = tempfile.mkdtemp(prefix=f".{name}.partial-", dir=releases_dir)
    try:
        staged = os.path.join(work, "release")
        shutil.move(unpack(archives["core"], work), staged)
        for pin in plugins:
            target = os.path.join(staged, pin["install_path"])
            if os.path.exists(target):
                raise ReleaseError(f"{pin['component']}: {pin['install_path']} already exists in core")
            plugin_dir = unpack(archives[pin["component"]], work)
            check_plugin_version(plugin_dir, pin)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.move(plugin_dir, target)
        php_override = lift_php82_restriction(staged) if params["allow_unsupported_php"] else None
        marker = {
            "name": name,
            "built": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "core": {"version": core["version"], "sha256": core["sha256"]},
            "plugins": {p["component"]: {"version": p["version"], "sha256": p["sha256"]} for p in plugins},
            "php_override": php_override,
        }
        with open(os.path.join(staged, MARKER), "w", encoding="utf-8") as fh:
            json.dump(marker, fh, indent=2, sort_keys=True)
        normalise_modes(staged)
        os.rename(staged, dest)
        return marker
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "releases_dir": {"type": "path", "required": True},
            "core": {"type": "dict", "required": True},
            "plugins": {"type": "list", "elements": "dict", "default": []},
            "source": {"type": "str", "choices": ["mirror", "upstream"], "default": "mirror"},
            "mirror": {"type": "path"},
            "download_dir": {"type": "path", "default": "/var/cache/moodleops/artifacts"},
            "allow_unsupported_php": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    name = release_name(p["core"], p["plugins"], p["allow_unsupported_php"])
    dest = os.path.join(p["releases_dir"], name)
    result = {"changed": False, "path": dest, "name": name, "requires": {}}
    try:
        if os.path.isfile(os.path.join(dest, MARKER)):
            pass
        elif os.path.exists(dest):
            module.fail_json(msg=f"{dest} exists but is not a complete release (no {MARKER}); move it away", **result)
        elif module.check_mode:
            # What a real run would use, verified: downloads (into the cache) and
            # sha256 checks happen; only the release directory is not built.
            result["changed"] = True
            fetch(p["core"], p["source"], p["mirror"], p["download_dir"])
            for pin in p["plugins"]:
                text = archive_version_php(fetch(pin, p["source"], p["mirror"], p["download_dir"]), pin)
                check_version_text(text, pin)
                result["requires"][pin["component"]] = plugin_requires(text)
            module.exit_json(**result)
        else:
            result["changed"] = True
            os.makedirs(p["releases_dir"], mode=0o755, exist_ok=True)
            started = time.monotonic()
            result["marker"] = build(p, dest, name)
            result["seconds"] = round(time.monotonic() - started, 1)
        for pin in p["plugins"]:
            text = read_version_php(os.path.join(dest, pin["install_path"]), pin)
            result["requires"][pin["component"]] = plugin_requires(text)
    except (ReleaseError, OSError, tarfile.TarError, zipfile.BadZipFile, ValueError) as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
