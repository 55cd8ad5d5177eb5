"""HTML forms as a browser sees them: the fields it would send when the
person clicks a given button. Moodle's forms carry hidden state (sesskey,
draft item ids, question sequence checks) that a load test must send back
exactly, so flows read it from the page instead of rebuilding it."""

from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Form:
    action: str
    method: str
    attrs: dict[str, str]
    fields: list[tuple[str, str]] = field(default_factory=list)     # what is sent as it stands
    radios: dict[str, list[str]] = field(default_factory=dict)      # name -> values offered
    buttons: list[tuple[str, str]] = field(default_factory=list)    # named submit buttons

    def value(self, name: str) -> str | None:
        for k, v in self.fields:
            if k == name:
                return v
        return None

    def submission(self, *, button: str | None = None, answers: dict[str, str] | None = None,
                   overrides: dict[str, str] | None = None) -> list[tuple[str, str]]:
        """The fields a click on `button` sends; `answers` picks radio values (else the first
        value offered, as a person answering at random would), `overrides` replaces fields."""
        overrides = overrides or {}
        out = [(k, overrides.get(k, v)) for k, v in self.fields]
        sent = {k for k, _ in out}
        out += [(k, v) for k, v in overrides.items() if k not in sent]
        for name, values in self.radios.items():
            if name not in sent and name not in overrides:
                out.append((name, (answers or {}).get(name, values[0])))
        if button is not None:
            for name, value in self.buttons:
                if name == button:
                    out.append((name, value))
                    break
            else:
                raise KeyError(f"no submit button named {button!r} in form {self.action!r}")
        return out


class _FormParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[Form] = []
        self._form: Form | None = None
        self._textarea: str | None = None
        self._text: list[str] = []
        self._select: str | None = None
        self._options: list[tuple[str, bool]] = []

    def handle_starttag(self, tag: str, attrs_list: list[tuple[str, str | None]]) -> None:
        attrs = {k: (v if v is not None else "") for k, v in attrs_list}
        if tag == "form":
            self._form = Form(action=attrs.get("action", ""), method=attrs.get("method", "get").lower(),
                              attrs=attrs)
            self.forms.append(self._form)
            return
        f = self._form
        if f is None:
            return
        name = attrs.get("name")
        if tag == "input" and name:
            kind = attrs.get("type", "text").lower()
            value = attrs.get("value", "")
            if kind in ("submit", "image"):
                f.buttons.append((name, value))
            elif kind == "radio":
                if "checked" in attrs:
                    f.fields.append((name, value))
                f.radios.setdefault(name, []).append(value)
            elif kind == "checkbox":
                if "checked" in attrs:
                    f.fields.append((name, value or "on"))
            elif kind not in ("file", "reset", "button"):
                f.fields.append((name, value))
        elif tag == "button" and name and attrs.get("type", "submit").lower() == "submit":
            f.buttons.append((name, attrs.get("value", "")))
        elif tag == "textarea" and name:
            self._textarea, self._text = name, []
        elif tag == "select" and name:
            self._select, self._options = name, []
        elif tag == "option" and self._select is not None:
            self._options.append((attrs.get("value", ""), "selected" in attrs))

    def handle_data(self, data: str) -> None:
        if self._textarea is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        f = self._form
        if tag == "form":
            self._form = None
        elif tag == "textarea" and self._textarea is not None and f is not None:
            f.fields.append((self._textarea, "".join(self._text)))
            self._textarea = None
        elif tag == "select" and self._select is not None and f is not None:
            chosen = [v for v, sel in self._options if sel] or [v for v, _ in self._options[:1]]
            if chosen:
                f.fields.append((self._select, chosen[0]))
            self._select = None


def parse_forms(html: str) -> list[Form]:
    parser = _FormParser()
    parser.feed(html)
    parser.close()
    # Radios already checked on the page are sent as they are; drop them from
    # the choices so submission() does not add the name twice.
    for f in parser.forms:
        checked = {k for k, _ in f.fields}
        f.radios = {k: v for k, v in f.radios.items() if k not in checked}
    return parser.forms


def find_form(html: str, *, action_contains: str = "", has_field: str = "") -> Form | None:
    """The first form whose action contains `action_contains` and that has field `has_field`."""
    for f in parse_forms(html):
        if action_contains and action_contains not in f.action:
            continue
        if has_field and f.value(has_field) is None and has_field not in f.radios:
            continue
        return f
    return None
