"""CSS inlining of a rendered variant (premailer), once per variant: it costs milliseconds."""

from __future__ import annotations

import logging


class _QuietCssutils(logging.Filter):
    """cssutils validates against CSS 2.1: it warns about every mso- property Outlook needs and
    every vendor or newer property email clients use. Other problems still get through."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "mso-" not in message and "Unknown Property name" not in message


_CSSUTILS_LOG = logging.getLogger("CSSUTILS")
_CSSUTILS_LOG.addFilter(_QuietCssutils())


def inline_css(document: str) -> str:
    """premailer: inline the template's base styles, keep the ignored <style> (media queries,
    dark mode) and every !important as written. Never touches the network."""
    from premailer import Premailer

    return str(
        Premailer(
            document,
            keep_style_tags=False,
            strip_important=False,
            allow_network=False,
            disable_validation=True,
            # Templates set width/height attributes themselves (images need real pixels).
            disable_basic_attributes=["width", "height"],
            remove_unset_properties=True,
        ).transform()
    )
