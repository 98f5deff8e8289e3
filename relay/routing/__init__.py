"""Routes: which destinations receive each incoming message, and how it is reshaped for them.

The ``routes:`` list of the config is compiled once by :func:`compile_routes`, which checks
everything and reports every problem at once, each with the path of the offending node.
:meth:`Routes.route` then runs for every message at ingestion. Everything here is pure.

Route keys
----------
``name``
    Optional; defaults to ``route-<index>`` (``route-0`` is the first route). Names must be
    unique: they label metrics and log lines.
``from``
    Required. ``segment``: Segment messages (tracking API and the Webhooks destination).
    ``customerio``: Customer.io reporting webhooks.
``sources``
    Optional: a source name or a list of them; the route only sees messages from those
    sources. Segment sources are the keys of ``sources.segment.write_keys`` plus ``webhook``
    (Segment's Webhooks destination); Customer.io sources are the keys of
    ``sources.customerio.signing_keys``. Without it, the route sees every source.
``match``
    Optional: conditions on the message, all of which must hold (see *Matching*).
``to``
    Required: a destination or a list of them, ``customerio.<name>`` or ``segment.<name>``
    as configured under ``destinations``. ``from: segment`` routes may send to both kinds
    (``segment.*`` forwards to another Segment source); ``from: customerio`` routes send to
    ``segment.*`` only, because Customer.io events sent back to Customer.io would loop.
``rename_events``
    ``{old: new}``: renames the ``event`` of a matching message (exact names).
``drop_properties``
    A glob or a list of globs on property names; matching properties are removed.
``rename_properties``
    ``{old: new}``: renames properties. All renames happen at once, so ``{a: b, b: a}``
    swaps two properties; a renamed property replaces one that already had the new name.
``set_properties``
    ``{name: value}``: sets properties, replacing any value they had.

Edits act on the Segment message that is delivered: for ``from: segment``, the message as
received; for ``from: customerio``, the Segment ``track`` made from the webhook (events
named like ``Email Opened``, properties like ``email_subject``). Property edits apply to
``properties``, or to ``traits`` for ``identify`` and ``group``; they address top-level
names only (a name may itself contain dots). They run in this order: ``rename_events``,
``drop_properties``, ``rename_properties``, ``set_properties``.

Matching
--------
``match`` is a mapping whose entries must all hold. A key is a dotted path into the message
(``event``, ``properties.plan``, ``context.device.type``; only objects are walked, so a
name that itself contains a dot cannot be reached), or one of the words below. The value
says what the field must be:

======================  ===========================================================
``"Order Completed"``   equals this text (case-sensitive)
``"Order *"``           a glob (text with ``*``, ``?`` or ``[``): ``*`` any run of
                        characters, ``?`` one character, ``[abc]``, ``[a-z]``, ``[!a]``
                        one character from (or not from) a set; ``[*]``, ``[?]`` and
                        ``[[]`` match those characters literally. Matches text only.
``42``, ``9.5``         equals this number (``42`` matches ``42.0``, never ``"42"``)
``true``, ``false``     is exactly JSON true / false (never ``1`` or ``0``)
``null``                is an explicit JSON null (an absent field is not null here)
``{gt: 10, lte: 99}``   numeric comparisons ``gt``, ``gte``, ``lt``, ``lte``; all
                        given must hold; numbers only (text like ``"12"`` never matches)
``[a, "b*", {gt: 3}]``  any of the listed forms
======================  ===========================================================

A field that is absent never matches any of these forms. The words:

``exists: [path, …]``
    Each path is present and not null (a single path may be written without a list).
``missing: [path, …]``
    Each path is absent or null: the opposite of ``exists``.
``not: {…}``
    The conditions inside do not all hold.
``any: [{…}, …]``
    At least one of the mappings holds.
``all: [{…}, …]``
    Every mapping holds; use it to put two conditions on the same field.

``from: segment`` routes match Segment messages: ``type`` (``identify``, ``track``,
``page``, ``screen``, ``group``, ``alias``, ``delete``), ``event``, ``userId``,
``properties.*``, ``traits.*``, ``context.*``, ``integrations.*`` and the other common
fields. ``from: customerio`` routes match the webhook as Customer.io sends it:
``object_type`` (``email``, ``push``, ``sms``, ``in_app``, …), ``metric`` (``sent``,
``opened``, ``clicked``, …), ``event_id``, ``timestamp`` and ``data.*``; for older
workspaces that send only ``event_type`` (``email_opened``), ``object_type`` and ``metric``
are derived from it for matching, so one route serves both formats. The top-level fields
of each kind are a closed set (``seg.FIELDS``, ``cio.FIELDS``); below them
(``properties.*``, ``data.*``, …) any name may be matched.

Delivery
--------
Every route of the message's direction is tried in order, each against the message as
received (never as edited by an earlier route). Each matching route adds its
destinations, and a destination receives a message at most once: the first matching route
that names it decides which edits apply. A message that matches no route goes nowhere.

A Segment message whose ``integrations`` has ``"Customer.io": false``, or ``"All": false``
without ``"Customer.io"`` enabled (``true`` or an options object), is never delivered to a
``customerio.*`` destination (names are case-sensitive, as in Segment). This also breaks
loops: events relay makes from Customer.io webhooks carry ``"Customer.io": false``.

Checks
------
Besides unknown keys (with the closest known one, or "put it under match:" for a
condition written on the route itself) and wrong types, :func:`compile_routes` reports: an
unknown ``from``, destination or source; a source of the other direction; an empty ``to``,
``sources``, ``any`` or list of values; a repeated destination; a ``from: customerio``
route sending to Customer.io; bad globs (an unclosed ``[``, an empty range like
``[z-a]``); YAML that read a value as a date; comparisons with non-numbers, and comparisons
written as text (``">= 100"``, which only matches that text); field paths of the other
direction, unknown top-level fields (``user_id``: did you mean ``userId``; ``plan``: did
you mean ``properties.plan``) and near-miss names below them (``data.campain_id``); Segment
``type`` and Customer.io ``object_type`` values that do not exist, and ``metric`` values
that are near misses of a known metric (``opend``; other metrics are allowed, the set is
open); conditions that can never hold together (``type: track`` with
``all: [{type: identify}]``, ``missing`` with ``exists``, ``{gt: 10, lt: 5}``, an
``any`` alternative that contradicts its surroundings); a property renamed after being
dropped; two properties renamed to the same name; repeated route names; and destinations
that never receive anything from a route because an earlier route of the same direction
always takes them first: one whose ``match`` entries are a subset of this route's (so it
matches at least as much), whose ``sources`` include this route's, and that names the
same destination.
"""

from __future__ import annotations

from relay.routing.compile import compile_routes
from relay.routing.language import CUSTOMERIO, KINDS, SEGMENT
from relay.routing.runtime import Problem, Route, Routes, RoutingResult

__all__ = [
    "CUSTOMERIO",
    "KINDS",
    "SEGMENT",
    "Problem",
    "Route",
    "Routes",
    "RoutingResult",
    "compile_routes",
]
