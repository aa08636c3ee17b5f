"""Before the node starts: `cardionode config check` and `cardionode echo`.

``config check`` finds, in one pass, everything that cannot work: the settings' own
problems (:meth:`node.config.Settings.problems`: ports, AE titles, files, an unwritable
``data_dir``, ...), keys that no setting has (each with the nearest known key,
:func:`node.config.check_settings`), what this machine and network refuse
(:func:`node.config.environment_problems`: host names that do not resolve, the listening
port taken by another program) and each destination that does not answer a C-ECHO
(:func:`node.dicom.sender.echo`, as results are sent: same AE titles, TLS and timeouts).
It also says whether a node runs with these settings (:mod:`node.ops.running`).

``echo [DEST ...]`` sends a C-ECHO to the named destinations (every one when none is
named) and prints one line each; exit 1 when one does not answer Success.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from node.config import ConfigError, Settings, check_settings, environment_problems, load_settings, name_problem
from node.dicom.sender import EchoOutcome, destination_targets, echo
from node.ops.running import running_node

__all__ = ["ECHO_TIMEOUT_S", "config_main", "echo_destinations", "echo_main"]

#: how long one C-ECHO may take at most (s; less when ``network_timeout_s`` is shorter)
ECHO_TIMEOUT_S = 10.0


def echo_destinations(settings: Settings, names: list[str] | None = None) -> list[tuple[int, EchoOutcome]]:
    """(index in ``destinations``, outcome) of a C-ECHO to each destination, or to those in ``names``.

    pynetdicom's own records of a failed association are kept out of the terminal: the
    outcome says what happened.
    """
    logging.getLogger("pynetdicom").setLevel(logging.CRITICAL)
    timeout_s = min(float(settings.network_timeout_s), ECHO_TIMEOUT_S)
    return [
        (i, echo(target, calling_ae=settings.ae_title, timeout_s=timeout_s))
        for i, (name, target) in enumerate(destination_targets(settings).items())
        if names is None or name in names
    ]


def config_main(args: argparse.Namespace) -> int:
    """``cardionode config check``: print the effective configuration, its warnings, whether a node runs,
    and every problem found; 1 if any."""
    try:
        settings, problems = check_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"PROBLEM: {exc}", file=sys.stderr)
        return 1
    print("# effective configuration")
    print(json.dumps(settings.redacted(), indent=2))
    for warning in settings.warnings():
        print(f"WARNING: {warning}")
    holder = running_node(settings.node_lock_path)
    print(f"node: running ({holder.describe()})" if holder else "node: not running")
    problems += settings.problems() + environment_problems(settings)
    named = [d.name for d in settings.destinations if name_problem(d.host, "") is None]  # the others: reported
    problems += [
        f"destinations[{i}] ({settings.destinations[i].name}): {outcome.describe()}"
        for i, outcome in echo_destinations(settings, named) if not outcome.ok
    ]
    for problem in problems:
        print(f"PROBLEM: {problem}")
    if problems:
        print(f"{len(problems)} problem(s); fix them before starting the node.")
        return 1
    print("configuration OK")
    return 0


def echo_main(args: argparse.Namespace) -> int:
    """``cardionode echo [DEST ...]``: C-ECHO to the named destinations (all when none); 1 unless each answers Success."""
    try:
        settings = load_settings(getattr(args, "config", None))
    except ConfigError as exc:
        print(f"PROBLEM: {exc}", file=sys.stderr)
        return 1
    names = list(getattr(args, "destinations", None) or []) or None
    known = [d.name for d in settings.destinations]
    unknown = [n for n in names or [] if n not in known]
    if unknown or not known:
        print(f"PROBLEM: no destination called {', '.join(map(repr, unknown))}; configured: {', '.join(known)}"
              if known else "PROBLEM: no destinations are configured ([[destinations]])", file=sys.stderr)
        return 1
    outcomes = echo_destinations(settings, names)
    for i, outcome in outcomes:
        print(f"{settings.destinations[i].name}: {outcome.describe()}")
    return 0 if all(outcome.ok for _, outcome in outcomes) else 1
