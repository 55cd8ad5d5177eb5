"""The moodle_release Ansible module's building blocks, on small archives made
here and on real plugin archives from the mirror."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import tarfile
import zipfile
from pathlib import Path

import pytest

from moodleops import REPO_ROOT

spec = importlib.util.spec_from_file_location("moodle_release", REPO_ROOT / "playbooks/library/moodle_release.py")
assert spec and spec.loader
release = importlib.util.module_from_spec(spec)
spec.loader.exec_module(release)

MIRROR = REPO_ROOT.parent / "shared" / "artifacts"

ENV_XML = """<?xml version="1.0"?>
<COMPATIBILITY_MATRIX>
  <MOODLE version="4.1" requires="3.9">
    <PHP version="7.4.0" level="required">
      <RESTRICT function="restrict_php_version_82" message="unsupportedphpversion82" />
    </PHP>
  </MOODLE>
  <MOODLE version="4.2" requires="3.11.8">
    <PHP version="8.0.0" level="required">
      <RESTRICT function="restrict_php_version_82" message="unsupportedphpversion82" />
    </PHP>
  </MOODLE>
</COMPATIBILITY_MATRIX>
"""


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _core_tgz(path: Path) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, text in {"moodle/version.php": "<?php $version = 2022112811.00;\n",
                           "moodle/admin/environment.xml": ENV_XML,
                           "moodle/mod/forum/version.php": "<?php\n"}.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _plugin_zip(path: Path, top: str, component: str, version: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{top}/version.php",
                    f"<?php\n$plugin->component = '{component}';\n$plugin->version = {version};\n")
    return path


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    d = tmp_path / "mirror"
    d.mkdir()
    _core_tgz(d / "core.tgz")
    _plugin_zip(d / "mod_demo-1.zip", "demo", "mod_demo", "2024010100")
    return d


def _params(mirror: Path, releases: Path, **over: object) -> dict:
    params = {
        "releases_dir": str(releases), "source": "mirror", "mirror": str(mirror),
        "download_dir": str(releases / "cache"), "allow_unsupported_php": False,
        "core": {"version": "2022112811.00", "file": "core.tgz", "sha256": _sha(mirror / "core.tgz"),
                 "url": "https://example.invalid/core.tgz"},
        "plugins": [{"component": "mod_demo", "version": "2024010100", "install_path": "mod/demo",
                     "file": "mod_demo-1.zip", "sha256": _sha(mirror / "mod_demo-1.zip"),
                     "url": "https://example.invalid/demo.zip"}],
    }
    params.update(over)
    return params


def test_build_places_core_and_plugins_and_marks_the_release(mirror: Path, tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    p = _params(mirror, releases)
    name = release.release_name(p["core"], p["plugins"], False)
    marker = release.build(p, str(releases / name), name)
    built = releases / name
    assert (built / "mod/demo/version.php").is_file()
    assert (built / release.MARKER).is_file()
    assert marker["plugins"]["mod_demo"]["version"] == "2024010100"
    assert "restrict_php_version_82" in (built / "admin/environment.xml").read_text()
    assert [e.name for e in releases.iterdir()] == [name]          # no partial left behind
    assert oct((built / "version.php").stat().st_mode & 0o777) == "0o644"


def test_release_name_changes_with_any_pin_and_with_the_override(mirror: Path, tmp_path: Path) -> None:
    p = _params(mirror, tmp_path)
    base = release.release_name(p["core"], p["plugins"], False)
    assert base == release.release_name(p["core"], list(reversed(p["plugins"])), False)
    assert base != release.release_name(p["core"], p["plugins"], True)
    other = [dict(p["plugins"][0], sha256="0" * 64)]
    assert base != release.release_name(p["core"], other, False)


def test_php82_override_lifts_only_the_41_restriction(mirror: Path, tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    p = _params(mirror, releases, allow_unsupported_php=True)
    name = release.release_name(p["core"], p["plugins"], True)
    marker = release.build(p, str(releases / name), name)
    xml = (releases / name / "admin/environment.xml").read_text()
    block41 = xml[xml.index('<MOODLE version="4.1"'):xml.index('<MOODLE version="4.2"')]
    assert "restrict_php_version_82" not in block41
    assert xml.count("restrict_php_version_82") == 1               # 4.2 block untouched
    assert "restrict_php_version_82" in marker["php_override"]


def test_wrong_checksum_is_refused_before_anything_is_unpacked(mirror: Path, tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    p = _params(mirror, releases)
    p["plugins"][0]["sha256"] = "a" * 64
    with pytest.raises(release.ReleaseError, match=r"mod_demo: sha256 of .* is [0-9a-f]{64}, the inventory pins a{64}"):
        release.build(p, str(releases / "x"), "x")
    assert list(releases.iterdir()) == []


def test_missing_archive_is_reported_by_name(mirror: Path, tmp_path: Path) -> None:
    p = _params(mirror, tmp_path)
    p["plugins"][0]["file"] = "mod_demo-9.zip"
    with pytest.raises(release.ReleaseError, match="mod_demo: mod_demo-9.zip is not in the mirror"):
        release.build(p, str(tmp_path / "x"), "x")


def test_plugin_whose_version_php_disagrees_with_the_pin_is_refused(mirror: Path, tmp_path: Path) -> None:
    releases = tmp_path / "releases"
    releases.mkdir()
    p = _params(mirror, releases)
    p["plugins"][0]["version"] = "2025010100"
    with pytest.raises(release.ReleaseError, match="version.php says 2024010100, the inventory pins 2025010100"):
        release.build(p, str(releases / "x"), "x")
    assert list(releases.iterdir()) == []                          # the partial tree was removed


def test_archive_without_a_single_top_folder_is_refused(mirror: Path, tmp_path: Path) -> None:
    bad = mirror / "mod_demo-1.zip"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("a/version.php", "<?php\n")
        zf.writestr("b/version.php", "<?php\n")
    with pytest.raises(release.ReleaseError, match="single top folder"):
        release.unpack(str(bad), str(tmp_path))


def test_real_mirror_plugin_unpacks_with_its_declared_component(tmp_path: Path) -> None:
    archive = MIRROR / "local_bulkenrol-v4.1-r4.zip"
    top = release.unpack(str(archive), str(tmp_path))
    release.check_plugin_version(top, {"component": "local_bulkenrol", "version": "2023010503",
                                       "file": archive.name})


def test_requires_is_read_from_the_archive_itself(tmp_path: Path) -> None:
    """What --check reports (no unpacking) and what a built release holds agree."""
    archive = MIRROR / "local_bulkenrol-v4.1-r4.zip"
    pin = {"component": "local_bulkenrol", "version": "2023010503", "file": archive.name}
    text = release.archive_version_php(str(archive), pin)
    release.check_version_text(text, pin)
    top = release.unpack(str(archive), str(tmp_path))
    assert release.plugin_requires(text) == release.plugin_requires(release.read_version_php(top, pin))
    assert release.plugin_requires(text) is not None
    assert release.plugin_requires("<?php\n$plugin->version = 1;\n") is None
