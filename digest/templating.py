"""The Jinja2 environment of the email templates (shipped ones, overridable one file at a time)
and the one way to render a template: any mistake in it is one RenderError naming file and line."""

from __future__ import annotations

import gettext
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from digest.errors import RenderError
from digest.plaintext import display_width, wrap
from digest.text import clean_text


def _shipped_loader() -> jinja2.BaseLoader:
    try:
        return jinja2.PackageLoader("digest.templates", ".")
    except (ModuleNotFoundError, ValueError):
        # A checkout that is not installed: templates/ sits next to digest/.
        return jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "templates")


def template_environment(
    templates_dir: Path | None = None, translations: gettext.NullTranslations | None = None
) -> jinja2.Environment:
    """Jinja2 environment: files in templates_dir override the shipped templates one by one.
    Templates translate their fixed strings with `_()` / `ngettext()` (Jinja2's i18n extension,
    new style: `_("Hello %(name)s", name=x)` escapes `x`, never the translation's markup)."""
    loaders: list[jinja2.BaseLoader] = []
    if templates_dir is not None:
        loaders.append(jinja2.FileSystemLoader(templates_dir))
    loaders.append(_shipped_loader())
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(loaders),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        finalize=_finalize,
        extensions=["jinja2.ext.i18n"],
    )
    env.install_gettext_translations(  # type: ignore[attr-defined]
        translations or gettext.NullTranslations(), newstyle=True
    )
    env.filters["wrap"] = wrap
    env.filters["width"] = display_width
    return env


def render_template(env: jinja2.Environment, name: str, context: dict[str, Any]) -> str:
    """Render one template; any mistake in it (syntax, an undefined name, a missing include,
    an error in an expression) is one RenderError naming the template file and line."""
    try:
        return env.get_template(name).render(context)
    except jinja2.TemplateSyntaxError as e:
        where = e.filename or e.name or name
        raise RenderError(f"template {where}, line {e.lineno}: {e.message}") from None
    except jinja2.TemplateNotFound as e:
        if e.name == name:
            raise RenderError(f"template {name} not found") from None
        raise RenderError(
            f"template {_template_line(e) or name}: includes {e.name!r}, which is not found"
        ) from None
    except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as e:
        line = _template_line(e)
        if line is None and not isinstance(e, jinja2.TemplateError):
            raise  # not the template's mistake
        message = e.message if isinstance(e, jinja2.TemplateError) and e.message else str(e)
        raise RenderError(f"template {line or name}: {message or type(e).__name__}") from None


def _template_line(error: BaseException) -> str | None:
    """'FILE, line N' of the innermost template frame of the error (Jinja2 rewrites its
    tracebacks so template code reports the template's own file and line)."""
    found = None
    tb = error.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.endswith(".py") and not filename.startswith("<"):
            found = f"{filename}, line {tb.tb_lineno}"
        tb = tb.tb_next
    return found


def _finalize(value: Any) -> Any:
    # Every value printed by a template passes here before escaping.
    if isinstance(value, str) and not isinstance(value, Markup):
        return clean_text(value)
    return value
