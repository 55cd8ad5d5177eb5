"""The mail that gives a school's referents the links to its export, sent
through the inventory's SMTP relay (backup_export_smtp_host/port; over
STARTTLS with backup_export_smtp_starttls) with the standard library. A relay
that refuses is one SmtpError naming it."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import TYPE_CHECKING

from moodleops.backup.config import BackupConfig
from moodleops.backup.progress import human_bytes
from moodleops.errors import SmtpError, oneline
from moodleops.inventory import School

if TYPE_CHECKING:
    from moodleops.backup.school_export import ExportReport

TIMEOUT = 30.0


def compose(cfg: BackupConfig, school: School, rep: ExportReport) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = cfg.mail_from
    msg["To"] = ", ".join(school.referents)
    msg["Subject"] = f"[Moodle UT] Export of {school.name} ({rep.export_id}): download links until {rep.links_expire}"
    msg["Date"] = format_datetime(rep.generated)
    msg["Message-ID"] = make_msgid(domain=cfg.mail_from.rsplit("@", 1)[-1])
    courses = {c["key"]: c for c in rep.already + rep.exported}
    lines = [
        "Hello,",
        "",
        (f"The end-of-agreement export of {school.name} is ready: {len(courses)} course(s), "
         f"{'with' if rep.user_data else 'without'} user data, as Moodle course backups (.mbz)."),
        "",
        f"The links below work until {rep.links_expire} (UTC), then stop working.",
    ]
    if rep.links_note:
        lines.append(rep.links_note)
    lines += ["", "manifest.json lists the courses; SHA256SUMS lets you check each file (sha256sum -c SHA256SUMS).", ""]
    for key, url in rep.links.items():
        name = key.rsplit("/", 1)[-1]
        size = f" ({human_bytes(courses[key]['size'])})" if key in courses else ""
        lines += [f"{name}{size}:", url, ""]
    lines += ["To restore a course: Moodle > Site administration > Courses > Restore course.", "",
              "-- ", "Université de Toulouse, Moodle platform operations"]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def send(cfg: BackupConfig, msg: EmailMessage) -> list[str]:
    """Hand the message to the relay; return the recipients it accepted."""
    address = f"{cfg.smtp_host}:{cfg.smtp_port}"
    check = ("that the relay runs and accepts mail from this host (backup_export_smtp_host, "
             "backup_export_smtp_port in the inventory)")
    recipients = [a.strip() for a in str(msg["To"]).split(",")]
    try:
        with smtplib.SMTP(cfg.smtp_host, cfg.smtp_port, timeout=TIMEOUT) as smtp:
            if cfg.smtp_starttls:
                _starttls(smtp, cfg, address)
            refused = smtp.send_message(msg, from_addr=cfg.mail_from, to_addrs=recipients)
    except smtplib.SMTPRecipientsRefused as exc:
        raise SmtpError(address, f"every recipient refused: {', '.join(exc.recipients)}",
                        "the referents' addresses in schools.yml and the relay's rules") from exc
    except smtplib.SMTPSenderRefused as exc:
        raise SmtpError(address, f"sender {cfg.mail_from} refused ({exc.smtp_code})",
                        "backup_export_mail_from and the relay's rules") from exc
    except TimeoutError as exc:
        raise SmtpError(address, f"no answer in {TIMEOUT:.0f} s (timeout)", check) from exc
    except ConnectionRefusedError as exc:
        raise SmtpError(address, "connection refused", check) from exc
    except (smtplib.SMTPException, OSError) as exc:
        raise SmtpError(address, f"{type(exc).__name__}: {oneline(exc)[:200]}", check) from exc
    if refused:
        raise SmtpError(address, f"recipient(s) refused: {', '.join(sorted(refused))} "
                                 f"(accepted: {', '.join(r for r in recipients if r not in refused) or 'none'})",
                        "the referents' addresses in schools.yml")
    return recipients


def _starttls(smtp: smtplib.SMTP, cfg: BackupConfig, address: str) -> None:
    try:
        context = ssl.create_default_context(cafile=cfg.smtp_ca_file or None)
    except OSError as exc:
        raise SmtpError(address, f"the CA bundle {cfg.smtp_ca_file} cannot be read ({exc.strerror or exc})",
                        "backup_export_smtp_ca_file in the inventory") from exc
    try:
        smtp.starttls(context=context)
    except smtplib.SMTPNotSupportedError as exc:
        raise SmtpError(address, "the relay does not offer STARTTLS, and backup_export_smtp_starttls asks for it",
                        "the relay's TLS setup (or set backup_export_smtp_starttls: false for a relay that "
                        "must be reached in clear)") from exc
    except ssl.SSLCertVerificationError as exc:
        trusted = cfg.smtp_ca_file or "the system's CAs"
        raise SmtpError(address, f"the relay's certificate is not trusted ({exc.verify_message}; checked "
                                 f"against {trusted})",
                        "backup_export_smtp_ca_file, and that backup_export_smtp_host is the name in the "
                        "relay's certificate") from exc
