"""The moodledata archive of a backup is checked before a restore changes
anything, and extracts on the web nodes' Python too (Debian 12's 3.11.2 has
no tarfile extraction filters: a restore failed there half-way, the database
already replaced)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from moodleops.backup import restore
from moodleops.backup.s3 import BackupError


def _archive(path: Path, *members: tuple[str, str]) -> Path:
    """members: (name, "file" | "dir" | "link:<target>")."""
    with tarfile.open(path, "w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind.startswith("link:"):
                info.type, info.linkname = tarfile.SYMTYPE, kind[5:]
                tar.addfile(info)
            else:
                data = f"content of {name}\n".encode()
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("member", [("/etc/cron.d/x", "file"), ("muc/../../x", "file"),
                                    ("muc/out", "link:/etc/passwd"), ("muc/up", "link:../../x")])
def test_an_unsafe_member_is_refused_before_anything(tmp_path: Path, member: tuple[str, str]) -> None:
    tar = _archive(tmp_path / "md.tar.gz", ("muc", "dir"), member)
    with pytest.raises(BackupError, match="unsafe member .*nothing on the target was changed"):
        restore._check_archive(tar)


@pytest.mark.parametrize("has_filter", [True, False])
def test_the_folders_extract_with_and_without_tarfiles_filters(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               has_filter: bool) -> None:
    tar = _archive(tmp_path / "md.tar.gz", ("muc", "dir"), ("muc/config.php", "file"), (".htaccess", "file"),
                   ("muc/here", "link:config.php"))
    restore._check_archive(tar)
    if not has_filter:      # as on Debian 12's Python 3.11.2: no filters, no `filter` argument
        monkeypatch.delattr(tarfile, "data_filter")
        real = tarfile.TarFile.extractall

        def extractall_of_3_11_2(self: tarfile.TarFile, path: str | Path = ".", members: object = None, *,
                                 numeric_owner: bool = False) -> None:
            real(self, path, members, numeric_owner=numeric_owner)  # type: ignore[arg-type]
        monkeypatch.setattr(tarfile.TarFile, "extractall", extractall_of_3_11_2)
    dest = tmp_path / "moodledata"
    dest.mkdir()
    restore._extract(tar, dest)
    assert (dest / "muc/config.php").read_text() == "content of muc/config.php\n"
    assert (dest / ".htaccess").is_file() and (dest / "muc/here").resolve() == (dest / "muc/config.php").resolve()
