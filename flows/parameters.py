"""Flow parameters the Prefect server checks before a run exists.

A deployment's parameter schema is derived from the flow's signature
(``prefect.utilities.callables.parameter_schema``); the server validates every new run's
parameters against it and answers 409 before anything is stored. So every rule a parameter
has is written here as JSON schema, and the same schema checks the value again in Python when
the flow is called directly (one set of rules, not two copies).

The 409's text is ``Error creating flow run: Validation failed for field '<path>'. Failure
reason: <message>`` where ``<message>`` is jsonschema's for the one error it picks
(``jsonschema.exceptions.best_match``). Nearly every jsonschema keyword puts the refused
value itself in that message (``pattern``: "'sftp://u:pw@h' does not match ...", ``maxItems``:
the whole 5,000-id list "... is too long", ``anyOf``: the whole request). ``const`` is the
exception: its message is "'<the constant>' was expected". So each rule here is an ``if``
(what is refused) ``then`` (a ``const`` whose text says what is expected instead), chained
with ``else`` so exactly one error comes out; keywords that would echo the value (pattern,
maxLength, maxItems) are left out of the schema. A rule on an optional value sits on the
whole ``X | None``, not inside ``anyOf`` (whose message is "<the value> is not valid under any
of the given schemas"): ``anyOf`` is a weak match for ``best_match``, so the ``const`` wins.

Where this cannot reach: keys of the top-level parameters that the flow does not take (Prefect's
``ParameterSchema`` has no ``additionalProperties``), and a value whose type is wrong (``type``'s
message repeats the value: "5 is not of type 'string'").

A parameter that may be left empty (a destination override, a meeting id) is ``X |
SkipJsonSchema[None]`` with ``CheckedIfGiven``: its JSON schema is X's alone, so the UI's form
shows X's input at once (a text box, a list) instead of the str/None toggle ("Property is type
None") that ``X | None`` (``anyOf`` with null) gives; empty means not given (``given``).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Annotated, Any

from pydantic import Field, GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic.json_schema import SkipJsonSchema
from pydantic_core import core_schema as cs

from storage_backends.registry import REGISTRY, SCHEME_PATTERN, url_examples

#: keywords left out of a checked parameter's schema: their messages repeat the value
ECHOING_KEYWORDS = ("pattern", "maxLength", "minLength", "maxItems", "minItems")


def expect(message: str) -> dict[str, Any]:
    """A schema nothing passes whose one error reads "'<message>' was expected" (a value equal
    to ``message`` itself is refused by the ``not``)."""
    return {"const": message, "not": {"const": message}}


def refusals(*rules: tuple[dict[str, Any], str]) -> dict[str, Any]:
    """``if rule[0] then refuse with rule[1] else (the next rule)``: the first rule that matches
    gives the one error."""
    chain: dict[str, Any] = {}
    for when, message in reversed(rules):
        step: dict[str, Any] = {"if": when, "then": expect(message)}
        if chain:
            step["else"] = chain
        chain = step
    return chain


@dataclass(frozen=True, eq=False)  # hashed by identity (the rules hold dicts)
class Checked:
    """``Annotated`` metadata: refuse what ``rules`` (a ``refusals()`` chain) refuses, in the
    JSON schema (the server, before a run exists) and in Python (a direct call)."""

    rules: tuple[tuple[dict[str, Any], str], ...]

    def schema(self) -> dict[str, Any]:
        return refusals(*self.rules)

    @cached_property
    def _validators(self) -> list[tuple[Any, str]]:
        from jsonschema import Draft202012Validator

        return [(Draft202012Validator(when), message) for when, message in self.rules]

    def first_refusal(self, value: Any) -> str | None:
        """The message of the first rule ``value`` (JSON-like: str, list, dict, None) breaks
        (checked with jsonschema, as the server does)."""
        for validator, message in self._validators:
            if validator.is_valid(value):
                return message
        return None

    def _check(self, value: Any) -> Any:
        message = self.first_refusal(value)
        if message is not None:
            raise ValueError(f"expected {message}")  # the rule's text, never the value
        return value

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> cs.CoreSchema:
        return cs.no_info_after_validator_function(self._check, handler(source))

    def __get_pydantic_json_schema__(self, schema: cs.CoreSchema, handler: GetJsonSchemaHandler) -> dict[str, Any]:
        out = handler(schema)
        for part in [out, *out.get("anyOf", [])]:
            for key in ECHOING_KEYWORDS:
                part.pop(key, None)
        out.update(copy.deepcopy(self.schema()))
        return out


def _string(**kw: Any) -> dict[str, Any]:
    return {"type": "string", **kw}


# --- parameters that may be left empty ----------------------------------------------------

#: the end of the string, in Python's ``re`` (what jsonschema uses, with ``re.search``) and in
#: JavaScript alike: ``$`` also matches before a trailing newline in Python ("rec\n" passed an
#: id pattern), and ``\Z`` / ``\z`` are not portable
END = r"(?![\s\S])"
#: a text that says nothing: "" (what an emptied text box gives) or only whitespace
BLANK = _string(pattern=r"^\s*" + END)


def given(value: Any) -> Any:
    """What an optional parameter says, with "not given" as None: the one place that decides
    it. None, "" and a text of only whitespace are not given; anything else is returned as it
    is (its rules then check it: " rec-1" is still a bad id)."""
    if isinstance(value, str) and not value.strip():
        return None
    return value


def not_given(**kw: Any) -> Any:
    """The default of an optional field of a parameter *model* (``ManualRequest``): None in
    Python, and no "default" in the JSON schema (a factory's value is not written there).
    Prefect's server takes a property without a default as nullable (``preprocess_schema`` in
    ``prefect.utilities.schema_tools.validation``), so a request that sends null for it, as the
    UI's str/None toggle did (and so the parameters of earlier runs), stays valid; the form shows
    the plain input all the same. A flow's own parameters cannot have this: Prefect writes the
    signature's default into the schema, so theirs is "" and the server refuses null for them."""
    return Field(default_factory=_none, **kw)


def _none() -> None:
    return None


@dataclass(frozen=True, eq=False)  # hashed by identity (the rules hold dicts)
class CheckedIfGiven(Checked):
    """``Annotated`` metadata on ``X | SkipJsonSchema[None]``: a parameter that may be left empty.

    The JSON schema is X's alone (no ``anyOf`` with null): the UI's form shows a text box (a
    list) at once. Empty means not given, in Python and for the server alike: None, "" and
    whitespace are accepted and come out as None (``given``); anything else must pass ``rules``,
    as with ``Checked`` (the server refuses it before a run exists, a direct call raises).
    (On ``X | None`` the same, with the str/None toggle in the form.)"""

    def schema(self) -> dict[str, Any]:
        # a blank text is not given; anything else meets the rules (or is null: see not_given)
        return {"if": BLANK, "then": True, "else": refusals(*self.rules)}

    def _check_given(self, value: Any) -> Any:
        return value if value is None else self._check(value)

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> cs.CoreSchema:
        checked = cs.no_info_after_validator_function(self._check_given, handler(source))
        return cs.no_info_before_validator_function(given, checked)


# --- destination URLs --------------------------------------------------------------------

#: where credentials go instead of a destination URL
CREDENTIALS_HELP = (
    "credentials come from the environment (SFTP_PASSWORD, SFTP_PRIVATE_KEY, AWS_ACCESS_KEY_ID and "
    "AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*) or a Prefect credentials block "
    "(rtk-s3-credentials, rtk-sftp-credentials, ...; see the README), never from the URL"
)
DESTINATION_MAX_LENGTH = 2048

#: a password in the URL's user part: ``scheme://user:password@host``, also ``%3A``-encoded
#: (the user part is everything before the last '@' of the authority, as urllib reads it)
_PASSWORD = r"^\s*[A-Za-z][A-Za-z0-9+.-]*:(//)?[^/?#]*(:|%3[Aa])[^/?#]*@"
_CONTROL = r"[\u0000-\u001f\u007f-\u009f]"
#: no '..' path segment (also %2e-encoded): the archive's root stays where the URL says
_NO_DOT_DOT = r"(?!.*(/|%2[Ff])(\.|%2[Ee]){2}(/|%2[Ff]|\?|" + END + "))"
_PORT = r"([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
_PATH = r"(/[^?#]*)?"


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


def _scheme_pattern(kind: str) -> str:
    """What ``parse_destination_url`` accepts for one backend (schemes in any case, as urllib)."""
    spec = REGISTRY[kind]
    schemes = "(" + "|".join(_any_case(s) for s in spec.schemes) + ")"
    if spec.addressing == "path":
        return schemes + r":(//(localhost)?/|/(?!/))[^?#]*"
    if spec.addressing == "host":
        return schemes + r"://[^/?#@:\s\[\]]+@([^/?#@:\s\[\]]+|\[[0-9A-Fa-f:.]+\])(:" + _PORT + "?)?" + _PATH
    query = ""
    if spec.options:
        option = "(" + "|".join(sorted(spec.options)) + ")=[^&#\\s]+"
        query = r"(\?(" + option + "(&" + option + ")*)?)?"
    return schemes + r"://[^/?#@:\s]+" + _PATH + query


#: a URL with the scheme of a registered backend
DESTINATION_PATTERN = SCHEME_PATTERN
#: a destination URL the archiver accepts: a registered scheme, the parts its addressing
#: takes (no user or port for buckets, a user for SFTP), only known storage options; spaces
#: around it are ignored (as parse_destination_url does)
DESTINATION_URL_PATTERN = "^ *" + _NO_DOT_DOT + "(" + "|".join(_scheme_pattern(k) for k in REGISTRY) + ") *" + END

DESTINATION_EXPECTED = (
    f"a destination URL such as {url_examples()} (bucket URLs take storage options as ?name=value, "
    "see the README; no fragment, no '..')"
)
DESTINATION_RULES: tuple[tuple[dict[str, Any], str], ...] = (
    (_string(pattern=_PASSWORD), f"a destination URL without a password ({CREDENTIALS_HELP})"),
    (_string(pattern=_CONTROL), "a destination URL without control characters (no newline, tab, ...)"),
    (_string(minLength=DESTINATION_MAX_LENGTH + 1), f"a destination URL of at most {DESTINATION_MAX_LENGTH:,} characters"),
    (_string(**{"not": {"pattern": DESTINATION_URL_PATTERN}}), DESTINATION_EXPECTED),
)
DESTINATION_HELP = (
    f"Archive everything here instead of each recording's storage_config: {url_examples()}. "
    f"No password in it: {CREDENTIALS_HELP}."
)

#: a destination URL (a list item: ``verify-archive``'s destinations)
DestinationURL = Annotated[str, Checked(DESTINATION_RULES)]
#: a destination override as a flow parameter: a text box in the UI's form, validated by the
#: server; empty (None, "", whitespace) means each recording's own destination. Its default is
#: "" (``not_given()`` in a model), never None: "default": null in the schema is what the form
#: then sends, and the server takes no null for a plain string
OptionalDestination = Annotated[
    str | SkipJsonSchema[None], CheckedIfGiven(DESTINATION_RULES), Field(description=DESTINATION_HELP)
]

# --- ids, lists, times --------------------------------------------------------------------

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}" + END
ID_EXPECTED = "an id of 1 to 64 letters, digits, '-' or '_' (as the RealtimeKit dashboard or API shows it)"
ID_RULES = ((_string(**{"not": {"pattern": ID_PATTERN}}), ID_EXPECTED),)
#: a recording or meeting id (the rules on the whole type, not inside a union's branch: an
#: error inside ``anyOf`` comes out as "<the value> is not valid under any of the given schemas")
Identifier = Annotated[str, Checked(ID_RULES)]
#: an id that may be left empty (a text box in the form; None when not given)
OptionalIdentifier = Annotated[str | SkipJsonSchema[None], CheckedIfGiven(ID_RULES)]

MAX_IDS = 1000
ID_LIST_RULES = (
    ({"type": "array", "minItems": MAX_IDS + 1},
     f"at most {MAX_IDS:,} recording ids in one run (split the list, or archive a meeting or a time range)"),
)
MAX_DESTINATIONS = 100
DESTINATION_LIST_RULES = (
    ({"type": "array", "minItems": MAX_DESTINATIONS + 1}, f"at most {MAX_DESTINATIONS} destinations in one run"),
)

#: what pydantic reads as a date-time: a date, or a date and time, with an optional zone
DATETIME_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,9})?)?([Zz]|[+-][0-9]{2}(:?[0-9]{2})?)?)?" + END
DATETIME_EXPECTED = "an ISO 8601 date or date-time, such as 2026-01-31 or 2026-01-31T12:00:00Z (UTC if no zone)"


@dataclass(frozen=True, eq=False)  # hashed by identity (the rules hold dicts)
class CheckedInSchema(Checked):
    """Like ``Checked``, for values pydantic parses itself (datetimes): the rules are in the
    JSON schema only (the Python check is pydantic's own)."""

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> cs.CoreSchema:
        return handler(source)


DATETIME_RULES = ((_string(**{"not": {"pattern": DATETIME_PATTERN}}), DATETIME_EXPECTED),)
#: an optional date-time parameter (the format is not checked by the server otherwise:
#: jsonschema only asserts ``format`` when asked to, and Prefect does not ask)
OptionalDateTime = Annotated[datetime | None, CheckedInSchema(DATETIME_RULES)]
DateTime = Annotated[datetime, CheckedInSchema(DATETIME_RULES)]


def form_field(default: Any, title: str, description: str) -> Any:
    """A flow parameter's default, and its label and help in the UI's form. Prefect's schema
    titles a flow's parameters by their names (``title=param.name``, whatever ``Field(title=...)``
    says); the title given again as ``json_schema_extra``, applied last, is the one the form
    shows (so the form reads "Recordings per window", not ``recordings_per_window``)."""
    return Field(default, title=title, description=description, json_schema_extra={"title": title})
