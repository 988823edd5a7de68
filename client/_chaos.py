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

The sync ``kubernetes`` client is used; every API call runs in a worker thread.
"""

from __future__ import annotations

import argparse
import asyncio
import enum
import json
import random as _random
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, cast

import urllib3
from kubernetes.client import ApiClient, Configuration, CoreV1Api, V1Eviction, V1ObjectMeta
from kubernetes.client.exceptions import ApiException, OpenApiException
from kubernetes.config import ConfigException

from client._k8s import SERVICE_ACCOUNT_DIR, load_api_configuration

__all__ = [
    "MAX_COUNT",
    "MAX_DURATION",
    "SYSTEM_NAMESPACES",
    "ChaosPlan",
    "Mode",
    "PodApi",
    "Round",
    "add_chaos_command",
    "run_chaos",
    "run_chaos_command",
]

#: Namespaces the tool never touches: killing their pods breaks the cluster, not the demo.
SYSTEM_NAMESPACES = frozenset({"kube-system", "kube-public", "kube-node-lease"})
#: Most rounds one run makes.
MAX_COUNT = 1000
#: Longest run in seconds (a day).
MAX_DURATION = 86_400.0
_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_RUNNING = "status.phase=Running"

# Exit codes; the same numbers as client._cli.EXIT_CODES (a test holds them together).
_EXIT_OK = 0
_EXIT_FAILED = 1
_EXIT_USAGE = 2
_EXIT_AUTH = 4

# Failures of the API or of the connection to it; anything else is a bug.
_FAILURES = (
    ApiException,
    OpenApiException,
    urllib3.exceptions.HTTPError,
    OSError,
    ValueError,
    KeyError,
    TypeError,
)


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
    """What one round did.

    ``outcome`` is one of: ``deleted``, ``evicted``, ``refused`` (a
    PodDisruptionBudget), ``gone`` (the pod vanished first), ``would-delete`` /
    ``would-evict`` (dry run), ``no-pod``, ``forbidden`` (RBAC) or ``failed``.
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


# Outcomes that end the run: trying again cannot help.
_FATAL = frozenset({"forbidden", "failed"})


def _grace_text(result: Round) -> str:
    if result.action == Mode.EVICT.value:
        return "eviction: PodDisruptionBudgets respected, the pod's own grace period"
    if result.grace_seconds == 0:
        return "grace 0 s: killed at once"
    own = "unset" if result.grace_seconds is None else f"{result.grace_seconds} s"
    return f"the pod's own grace period: {own}"


class PodApi:
    """The three pod calls the tool makes; blocking (run them in a thread).

    Args:
        api_client: A configured client; the caller keeps ownership.
        timeout: Seconds to connect and seconds to wait for each answer.
    """

    def __init__(self, api_client: ApiClient, timeout: float = 10.0) -> None:
        self._core = CoreV1Api(api_client)
        self._timeout = (timeout, timeout)

    def running(self, namespace: str, selector: str) -> list[Mapping[str, Any]]:
        """The Running pods matching ``selector`` (as JSON objects, in API order)."""
        # With _preload_content=False the client returns the raw urllib3 response.
        response = cast(
            urllib3.HTTPResponse,
            self._core.list_namespaced_pod(
                namespace,
                label_selector=selector,
                field_selector=_RUNNING,
                _preload_content=False,
                _request_timeout=self._timeout,
            ),
        )
        try:
            items = json.loads(response.data).get("items") or []
        finally:
            response.release_conn()
        return [item for item in items if isinstance(item, dict)]

    def delete(self, namespace: str, name: str, grace_seconds: int | None) -> None:
        """DELETE the pod; ``grace_seconds`` None leaves the pod's own grace period."""
        # None sends no gracePeriodSeconds at all: the API then uses the pod's own.
        response = self._core.delete_namespaced_pod(
            name,
            namespace,
            grace_period_seconds=grace_seconds,
            _preload_content=False,
            _request_timeout=self._timeout,
        )
        cast(urllib3.HTTPResponse, response).release_conn()

    def evict(self, namespace: str, name: str) -> None:
        """POST a ``policy/v1`` Eviction for the pod (429 while a PDB forbids it)."""
        body = V1Eviction(
            api_version="policy/v1",
            kind="Eviction",
            metadata=V1ObjectMeta(name=name, namespace=namespace),
        )
        response = self._core.create_namespaced_pod_eviction(
            name, namespace, body, _preload_content=False, _request_timeout=self._timeout
        )
        cast(urllib3.HTTPResponse, response).release_conn()


# --- one round --------------------------------------------------------------------------------


def _candidates(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Running pods not already terminating, by name (so a seed repeats a run)."""
    alive = [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")]
    return sorted(alive, key=lambda p: str(p["metadata"]["name"]))


def _pod_grace(pod: Mapping[str, Any]) -> int | None:
    grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds")
    return grace if isinstance(grace, int) else None


def _api_failure(exc: BaseException, plan: ChaosPlan, verb: str) -> tuple[str, str]:
    """(outcome, detail) for an exception from ``verb`` on the API."""
    if isinstance(exc, ApiException):
        if exc.status == 403:
            return "forbidden", (
                f"the API server refused to {verb} (403 Forbidden): this account needs "
                f"RBAC for pods (list, delete, pods/eviction create) in {plan.namespace}"
            )
        return "failed", f"{verb}: HTTP {exc.status} {exc.reason}"
    return "failed", f"{verb}: {type(exc).__name__}: {exc}"


def _kill(api: PodApi, plan: ChaosPlan, name: str) -> tuple[str, str]:
    """Kill ``name`` per the plan; (outcome, detail). Blocking."""
    try:
        if plan.mode is Mode.EVICT:
            api.evict(plan.namespace, name)
            return "evicted", ""
        api.delete(plan.namespace, name, 0 if plan.mode is Mode.FORCE else None)
    except ApiException as exc:
        if exc.status == 429 and plan.mode is Mode.EVICT:
            return "refused", "a PodDisruptionBudget allows no disruption now (429)"
        if exc.status == 404:
            return "gone", "the pod was already deleted"
        return _api_failure(exc, plan, plan.mode.value)
    except _FAILURES as exc:
        return _api_failure(exc, plan, plan.mode.value)
    return "deleted", ""


def _one_round(api: PodApi, plan: ChaosPlan, number: int, pick: _random.Random) -> Round:
    """List, pick, kill (or only say so). Blocking."""

    def result(pod: str | None, outcome: str, detail: str = "", grace: int | None = None) -> Round:
        stamp = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        action = plan.mode.value
        return Round(number, plan.rounds, stamp, plan.namespace, pod, action, grace,
                     plan.dry_run, outcome, detail)  # fmt: skip

    try:
        pods = _candidates(api.running(plan.namespace, plan.selector))
    except _FAILURES as exc:
        return result(None, *_api_failure(exc, plan, "list pods"))
    if not pods:
        where = f"no Running pod in {plan.namespace} matches {plan.selector}"
        return result(None, "no-pod", where)
    victim = pick.choice(pods)
    name = str(victim["metadata"]["name"])
    grace = 0 if plan.mode is Mode.FORCE else _pod_grace(victim)
    if plan.dry_run:
        return result(name, "would-evict" if plan.mode is Mode.EVICT else "would-delete", "", grace)
    return result(name, *_kill(api, plan, name), grace)


# --- the run ----------------------------------------------------------------------------------


async def run_chaos(
    plan: ChaosPlan,
    api: PodApi,
    report: Callable[[Round], None],
    *,
    random: _random.Random | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> list[Round]:
    """Run the plan's rounds, ``interval`` apart, reporting each as it ends.

    Stops after ``plan.rounds`` rounds, when the next round would start after
    ``plan.duration``, or at a forbidden or failed round (the last one returned).

    Args:
        plan: What to do.
        api: The pod calls.
        report: Called with each round, in order.
        random: Picks the pod; seeded for repeatable runs.
        clock: Monotonic seconds; injected for tests.
        sleep: Waits between rounds; injected for tests.
    """
    pick = random or _random.Random()
    started = clock()
    done: list[Round] = []
    for number in range(1, plan.rounds + 1):
        result = await asyncio.to_thread(_one_round, api, plan, number, pick)
        report(result)
        done.append(result)
        if result.outcome in _FATAL or number == plan.rounds:
            break
        next_start = clock() + plan.interval
        if plan.duration is not None and next_start - started > plan.duration:
            break
        await sleep(plan.interval)
    return done


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


def _api_client(args: argparse.Namespace) -> ApiClient:
    if args.server:
        return ApiClient(Configuration(host=args.server.rstrip("/")))
    return ApiClient(load_api_configuration(SERVICE_ACCOUNT_DIR, args.kubeconfig))


async def run_chaos_command(
    args: argparse.Namespace, out: Callable[[str], None], err: Callable[[str], None]
) -> int:
    """Run ``chaos`` from parsed arguments; the exit code."""
    try:
        plan = _plan(args)
    except ValueError as exc:
        err(f"error: {exc}")
        return _EXIT_USAGE
    try:
        client = await asyncio.to_thread(_api_client, args)
    except (ConfigException, OSError) as exc:
        err(f"error: {exc}")
        return _EXIT_FAILED

    def report(result: Round) -> None:
        out(json.dumps(result.as_dict()) if args.json else result.line())

    try:
        rounds = await run_chaos(
            plan, PodApi(client, args.timeout), report, random=_random.Random(args.seed)
        )
    finally:
        client.close()  # type: ignore[no-untyped-call]  # generated code without annotations
    if rounds and rounds[-1].outcome in _FATAL:
        err(f"error: {rounds[-1].detail}")
    return exit_code(rounds)
