# -*- test-case-name: tests.jmap.test_sanitise -*-
"""
The HTML of a message made safe to show in the webmail.

An HTML body is written by whoever sent the mail, so it is hostile until
proven otherwise: scripts, event handlers, C{javascript:} links, forms that
post a password elsewhere, and remote images that tell the sender when and
where the mail was read.  L{sanitiseHtml} keeps an allowlist of formatting
tags and attributes and drops everything else, through C{nh3} (the Python
binding of the Rust C{ammonia} sanitiser, which parses as a browser does,
with html5ever).  The webmail then shows the result in a sandboxed
C{iframe} under a strict Content-Security-Policy, so a mistake here is not
the only line of defence.
"""

import re

import nh3

# Formatting only: no form controls, no embedded documents or plug-ins, no
# SVG or MathML (their own script and link machinery), no <base>, <meta>
# or <link>.
ALLOWED_TAGS = frozenset({
    "a", "abbr", "acronym", "address", "b", "bdi", "bdo", "big", "blockquote", "br", "caption",
    "center", "cite", "code", "col", "colgroup", "dd", "del", "details", "dfn", "div", "dl", "dt",
    "em", "figcaption", "figure", "font", "h1", "h2", "h3", "h4", "h5", "h6", "hr", "i", "img",
    "ins", "kbd", "li", "mark", "ol", "p", "pre", "q", "s", "samp", "small", "span", "strike",
    "strong", "sub", "summary", "sup", "table", "tbody", "td", "tfoot", "th", "thead", "tr", "tt",
    "u", "ul", "var", "wbr",
})

# Tags dropped together with their content: their text is code, or a
# document of its own, never something the reader should see as text.
DROPPED_WITH_CONTENT = frozenset({
    "script", "style", "title", "noscript", "template", "iframe", "frame", "frameset", "object",
    "embed", "applet", "svg", "math", "textarea", "select", "head",
})

_TABLE_CELL = {"align", "valign", "colspan", "rowspan", "width", "height", "bgcolor"}

# No event handler (on*), no id or class (they could reach the app's own
# styles were the message ever shown outside its iframe), no srcset,
# formaction, background or other attribute that loads a URL, except href
# and img src, which are checked below.
ALLOWED_ATTRIBUTES = {
    "*": {"title", "lang", "dir", "style", "align"},
    "a": {"href"},
    "img": {"src", "alt", "width", "height"},
    "font": {"color", "size", "face"},
    "table": {"width", "border", "cellpadding", "cellspacing", "bgcolor", "summary"},
    "td": _TABLE_CELL,
    "th": _TABLE_CELL | {"scope"},
    "tr": {"valign", "bgcolor"},
    "col": {"span", "width"},
    "colgroup": {"span", "width"},
    "ol": {"start", "type"},
    "li": {"value"},
    "blockquote": {"cite"},
    "q": {"cite"},
    "del": {"datetime"},
    "ins": {"datetime"},
}

# Links may point at the web and at mail addresses; javascript:, data:,
# vbscript:, file: and every other scheme go.
URL_SCHEMES = frozenset({"http", "https", "mailto"})

# CSS properties that only change how text and boxes look.  Positioning
# (position, z-index, top...) is left out so that a message cannot lay a
# fake login form over the page; anything that takes a URL (background,
# background-image, list-style-image, content, cursor) is left out so that
# CSS cannot fetch a tracker.
STYLE_PROPERTIES = frozenset({
    "color", "background-color", "font", "font-family", "font-size", "font-style", "font-weight",
    "font-variant", "line-height", "letter-spacing", "word-spacing", "text-align", "text-decoration",
    "text-indent", "text-transform", "vertical-align", "white-space", "direction", "width", "max-width",
    "min-width", "height", "margin", "margin-top", "margin-right", "margin-bottom", "margin-left",
    "padding", "padding-top", "padding-right", "padding-bottom", "padding-left", "border",
    "border-top", "border-right", "border-bottom", "border-left", "border-color", "border-style",
    "border-width", "border-collapse", "border-spacing", "border-radius", "list-style-type",
    "display",
})

# The only CSS functions a kept value may call: colours.  url(), image(),
# image-set(), expression() (old Internet Explorer's script in CSS), var()
# and the rest are refused.
_STYLE_FUNCTIONS = frozenset({"rgb", "rgba", "hsl", "hsla"})
_FUNCTION = re.compile(r"([-\w]*)\s*\(")
# Escapes and comments are how a filtered word is smuggled past a filter
# ("u\rl(", "ur/**/l("); a value that has one is dropped whole.
_SMUGGLING = re.compile(r"[\\<>@]|/\*|&#|&[a-z]")


def _styleDeclaration(declaration: str) -> str | None:
    """
    One C{property: value} of a C{style} attribute, if it is allowed.

    @return: the declaration, normalised, or C{None} to drop it.
    """
    name, colon, value = declaration.partition(":")
    name, value = name.strip().lower(), value.strip()
    if not colon or name not in STYLE_PROPERTIES or not value or _SMUGGLING.search(value):
        return None
    for function in _FUNCTION.findall(value):
        if function.lower() not in _STYLE_FUNCTIONS:
            return None
    return f"{name}: {value}"


def _sanitiseStyle(value: str) -> str | None:
    """
    A C{style} attribute with only its allowed declarations.

    @return: the kept declarations, or C{None} if none is kept.
    """
    kept = [d for d in (_styleDeclaration(part) for part in value.split(";")) if d is not None]
    return "; ".join(kept) or None


def _attributeFilter(remoteImages: bool):
    """
    @param remoteImages: whether an C{img} keeps a remote C{src}.
    @return: the C{attribute_filter} for L{nh3.clean}: it checks every
        C{style} value and, unless C{remoteImages}, takes away the C{src}
        of every image (the URL schemes left are all remote ones, so any
        C{src} would be fetched from outside).
    """

    def attributeFilter(tag: str, attribute: str, value: str) -> str | None:
        if attribute == "style":
            return _sanitiseStyle(value)
        if tag == "img" and attribute == "src" and not remoteImages:
            return None
        return value

    return attributeFilter


def sanitiseHtml(html: str, *, remoteImages: bool = False) -> str:
    """
    Make the HTML body of a message safe to show.

    Kept: formatting tags and attributes (L{ALLOWED_TAGS},
    L{ALLOWED_ATTRIBUTES}), C{http}, C{https} and C{mailto} links, which
    open in a new browsing context with C{rel="noopener noreferrer"}, and
    inline styles limited to L{STYLE_PROPERTIES}.  Dropped: every other
    tag (scripts, styles, frames, objects and their content; forms and
    unknown tags keep their text), every event handler and other
    attribute, relative URLs and every other URL scheme (C{javascript:},
    C{data:}, C{vbscript:}), comments, and by default the C{src} of every
    image.

    @param html: the decoded HTML body (a fragment or a whole document).
    @param remoteImages: keep the C{src} of images (C{http}/C{https}
        only), which lets the sender see that the mail was read; off
        unless the reader asks.
    @return: an HTML fragment.
    """
    return nh3.clean(
        html,
        tags=set(ALLOWED_TAGS),
        clean_content_tags=set(DROPPED_WITH_CONTENT),
        attributes={tag: set(names) for tag, names in ALLOWED_ATTRIBUTES.items()},
        attribute_filter=_attributeFilter(remoteImages),
        strip_comments=True,
        link_rel="noopener noreferrer",
        set_tag_attribute_values={"a": {"target": "_blank"}},
        url_schemes=set(URL_SCHEMES),
        # Mail has no base URL; a relative one would resolve against the
        # webmail's own origin.
        url_relative="deny",
        filter_style_properties=set(STYLE_PROPERTIES),
    )
