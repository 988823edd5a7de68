"""``python -m client chaos``: kill one random Running pod at a time, always bounded.

Each round lists the pods in ``--namespace`` that match ``--selector`` and are
Running (``fieldSelector=status.phase=Running``), skips the ones already
terminating, picks one at random and then, by mode:

* ``delete`` (default): a plain DELETE with no grace override, so the pod gets
  its own ``terminationGracePeriodSeconds``: preStop, SIGTERM, the service's
  drain and graceful stop. This is the path a rollout or a node drain takes.
* ``force`` (``--force``): DELETE with ``gracePeriodSeconds=0``: the container
  is killed at once, as when a node dies.
* ``evict`` (``--evict``): a ``policy/v1`` Eviction, which the API server
  refuses with 429 while a PodDisruptionBudget allows no disruption; the
  refusal is reported and the run goes on.

The run is bounded: ``--count`` rounds (default 1, at most :data:`MAX_COUNT`),
and ``--duration`` seconds when given (``--count 0`` means "until
--duration", which is then required). It refuses the system namespaces and an
empty selector. One line is printed per round (one JSON object with
``--json``).

This module is the command line and the plan; the calls to the Kubernetes API are in
``client._chaos_k8s``, imported only when the command runs (the ``kubernetes``
package takes most of a second to import, which no other command should pay).
"""

from __future__ import annotations

import argparse
import enum
import json
import random as _random
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "FATAL_OUTCOMES",
    "MAX_COUNT",
    "MAX_DURATION",
    "SYSTEM_NAMESPACES",
    "ChaosPlan",
    "Mode",
    "Round",
    "add_chaos_command",
    "exit_code",
    "run_chaos_command",
]

#: Namespaces the tool never touches: killing their pods breaks the cluster, not the demo.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
#: Most rounds one run makes.
MAX_COUNT = 1000
#: Longest run in seconds (a day).
MAX_DURATION = 86_400.0
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

# Exit codes; the same numbers as client.cli.EXIT_CODES (a test holds them together).
_EXIT_OK = 0
_EXIT_FAILED = 1
_EXIT_USAGE = 2
_EXIT_AUTH = 4


class Mode(enum.Enum):
    """How a pod is killed."""

    DELETE = "delete"
    FORCE = "force-delete"
    EVICT = "evict"


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    """What one run does; validated on creation.

    Attributes:
        namespace: Where the pods are; never a system namespace.
        selector: A non-empty label selector, e.g. ``app.kubernetes.io/component=users``.
        mode: How each pod is killed.
        count: Rounds to make, 1 to :data:`MAX_COUNT`; 0 for "until ``duration``".
        interval: Seconds from the end of one round to the start of the next.
        duration: Seconds after which no round starts; None for no time bound
            (then ``count`` bounds the run).
        dry_run: Only list and print what would be done; nothing is changed.

    Raises:
        ValueError: A value out of range, a system namespace, an empty selector,
            or no bound at all.
    """

    namespace: str
    selector: str
    mode: Mode = Mode.DELETE
    count: int = 1
    interval: float = 30.0
    duration: float | None = None
    dry_run: bool = False

    def __post_init__(self) -> None:
        problem = _namespace_problem(self.namespace) or _selector_problem(self.selector)
        if problem:
            raise ValueError(problem)
        if not 0 <= self.count <= MAX_COUNT:
            raise ValueError(f"count must be in [0, {MAX_COUNT}], got {self.count}")
        if not self.interval > 0:
            raise ValueError(f"interval must be positive, got {self.interval}")
        if self.duration is not None and not 0 < self.duration <= MAX_DURATION:
            raise ValueError(f"duration must be in (0, {MAX_DURATION:g}], got {self.duration}")
        if self.count == 0 and self.duration is None:
            raise ValueError("--count 0 runs until --duration, so --duration is required")

    @property
    def rounds(self) -> int:
        """The most rounds this plan makes (``duration`` may end it sooner)."""
        return self.count or MAX_COUNT


@dataclass(frozen=True, slots=True)
class Round:
    """What one round did (one output line, or one JSON object with ``--json``).

    Attributes:
        round: 1-based number of the round.
        of: The most rounds of the run (``--count``, or the cap with ``--count 0``).
        time: When the round ended, RFC 3339 UTC.
        namespace: The namespace of the pods.
        pod: The pod picked; None when none was (no pod, or the list failed).
        action: The mode: ``delete``, ``force-delete`` or ``evict``.
        grace_seconds: 0 when forced, else the pod's own grace period (None if unset).
        dry_run: True when nothing was changed.
        outcome: ``deleted``, ``evicted``, ``refused`` (a PodDisruptionBudget),
            ``gone`` (the pod vanished first), ``would-delete`` / ``would-evict``
            (dry run), ``no-pod``, ``forbidden`` (RBAC) or ``failed``.
        detail: Why, for the outcomes that need a reason.
    """

    round: int
    of: int
    time: str
    namespace: str
    pod: str | None
    action: str
    grace_seconds: int | None
    dry_run: bool
    outcome: str
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The round as a JSON-ready mapping (the ``--json`` line)."""
        return asdict(self)

    def line(self) -> str:
        """The human-readable line."""
        prefix = f"{self.time} [{self.round}/{self.of}]"
        if self.pod is None:
            return f"{prefix} {self.outcome}: {self.detail}"
        verb = f"would {self.action}" if self.dry_run else self.action
        target = f"{verb} {self.namespace}/{self.pod} ({_grace_text(self)})"
        tail = f": {self.detail}" if self.detail else ""
        return f"{prefix} {target} -> {self.outcome}{tail}"


#: Outcomes that end the run: trying again cannot help.
FATAL_OUTCOMES = frozenset({"forbidden", "failed"})


def _grace_text(result: Round) -> str:
    if result.action == Mode.EVICT.value:
        return "eviction: PodDisruptionBudgets respected, the pod's own grace period"
    if result.grace_seconds == 0:
        return "grace 0 s: killed at once"
    own = "unset" if result.grace_seconds is None else f"{result.grace_seconds} s"
    return f"the pod's own grace period: {own}"


def exit_code(rounds: Sequence[Round]) -> int:
    """0 when the run did what it could; 4 on 403; 1 on another failure or no pod ever."""
    last = rounds[-1].outcome if rounds else "no-pod"
    if last == "forbidden":
        return _EXIT_AUTH
    if last == "failed" or all(r.outcome == "no-pod" for r in rounds):
        return _EXIT_FAILED
    return _EXIT_OK


# --- the command line -------------------------------------------------------------------------


def _namespace_problem(namespace: str) -> str:
    if namespace in SYSTEM_NAMESPACES:
        return f"refusing namespace {namespace}: its pods run the cluster itself"
    if not _DNS_LABEL.fullmatch(namespace):
        return f"bad namespace {namespace!r} (a DNS label is expected)"
    return ""


def _selector_problem(selector: str) -> str:
    if not selector.strip():
        return "an empty selector matches every pod: give one, e.g. app.kubernetes.io/name=x"
    return ""


def _checked(problem_of: Callable[[str], str]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        problem = problem_of(text)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return text

    parse.__name__ = "value"
    return parse


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _count(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"must be in [0, {MAX_COUNT}], got {text}")
    return value


_EPILOG = f"""\
The API server: --server when given (no credentials, e.g. `kubectl proxy`),
else the pod's service account when running in a cluster, else the kubeconfig.
The account needs list and delete on pods (create on pods/eviction with --evict).

bounds: --count rounds (at most {MAX_COUNT}); --count 0 runs until --duration.

exit codes:
    0  every round ran (a PodDisruptionBudget refusal is an outcome, not an error)
    1  a call to the API failed, or no round found a Running pod
    2  usage error: bad option, a system namespace or an empty selector
    3  the run went past its bound: --count rounds of API calls (each tried
       once, within --timeout to connect and --timeout to answer) and intervals,
       or --duration
    4  the API server said 403 Forbidden (RBAC)"""


def add_chaos_command(commands: Any) -> None:
    """Add the ``chaos`` subcommand to the CLI's subparsers."""
    cmd = commands.add_parser(
        "chaos",
        help="kill pods (one random Running pod at a time) to watch failover",
        description="Kill one random Running pod at a time, --count times, --interval apart.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_target_options(cmd)
    _add_bound_options(cmd)
    _add_mode_options(cmd)


def _add_target_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--namespace",
        required=True,
        type=_checked(_namespace_problem),
        help="namespace of the pods (required); kube-system, kube-public and kube-node-lease "
        "are refused",
    )
    cmd.add_argument(
        "--selector",
        required=True,
        type=_checked(_selector_problem),
        help="label selector of the pods, e.g. app.kubernetes.io/component=users (required, "
        "not empty)",
    )
    cmd.add_argument(
        "--server",
        default=None,
        metavar="URL",
        help="API server URL without credentials, e.g. http://127.0.0.1:8001 from kubectl proxy "
        "(default: in-cluster config, else the kubeconfig)",
    )
    cmd.add_argument(
        "--kubeconfig",
        default=None,
        metavar="PATH",
        help="kubeconfig outside a cluster (default: $KUBECONFIG, else ~/.kube/config)",
    )
    cmd.add_argument(
        "--timeout",
        type=_positive,
        default=10.0,
        metavar="SECONDS",
        help="seconds to wait for each API call (default: %(default)s)",
    )


def _add_bound_options(cmd: argparse.ArgumentParser) -> None:
    cmd.add_argument(
        "--count",
        type=_count,
        default=1,
        metavar="N",
        help=f"pods to kill, 0 to {MAX_COUNT}; 0 means until --duration (default: %(default)s)",
    )
    cmd.add_argument(
        "--interval",
        type=_positive,
        default=30.0,
        metavar="SECONDS",
        help="seconds between two kills (default: %(default)s)",
    )
    cmd.add_argument(
        "--duration",
        type=_positive,
        default=None,
        metavar="SECONDS",
        help=f"start no kill after this many seconds, at most {MAX_DURATION:g} "
        "(default: no time bound; required with --count 0)",
    )
    cmd.add_argument(
        "--seed", type=int, default=None, help="seed of the random pick (default: random)"
    )


def _add_mode_options(cmd: argparse.ArgumentParser) -> None:
    mode = cmd.add_mutually_exclusive_group()
    mode.add_argument(
        "--force",
        action="store_true",
        help="delete with grace period 0: killed at once, no drain (default: the pod's own grace)",
    )
    mode.add_argument(
        "--evict",
        action="store_true",
        help="evict (policy/v1) instead of delete: a PodDisruptionBudget may refuse (default: off)",
    )
    cmd.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be killed; change nothing (default: off)",
    )
    cmd.add_argument(
        "--json", action="store_true", help="one JSON object per round (default: one text line)"
    )


def _plan(args: argparse.Namespace) -> ChaosPlan:
    mode = Mode.FORCE if args.force else Mode.EVICT if args.evict else Mode.DELETE
    return ChaosPlan(
        namespace=args.namespace,
        selector=args.selector,
        mode=mode,
        count=args.count,
        interval=args.interval,
        duration=args.duration,
        dry_run=args.dry_run,
    )


async def run_chaos_command(
    args: argparse.Namespace, out: Callable[[str], None], err: Callable[[str], None]
) -> int:
    """Run ``chaos`` from parsed arguments; the exit code."""
    try:
        plan = _plan(args)
    except ValueError as exc:
        err(f"error: {exc}")
        return _EXIT_USAGE
    from client import _chaos_k8s  # heavy: only for this command

    def report(result: Round) -> None:
        out(json.dumps(result.as_dict()) if args.json else result.line())

    try:
        rounds = await _chaos_k8s.run_against(
            plan, args.server, args.kubeconfig, args.timeout, report, _random.Random(args.seed)
        )
    except _chaos_k8s.ConfigurationError as exc:
        err(f"error: {exc}")
        return _EXIT_FAILED
    if rounds and rounds[-1].outcome in FATAL_OUTCOMES:
        err(f"error: {rounds[-1].detail}")
    return exit_code(rounds)
