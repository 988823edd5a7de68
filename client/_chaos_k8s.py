"""The Kubernetes half of ``chaos``: list Running pods, pick one, delete or evict it.

Imported by :func:`client._chaos.run_chaos_command` only when the command runs.
The sync ``kubernetes`` client is used; every API call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import random as _random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, cast

import urllib3
from kubernetes.client import ApiClient, Configuration, CoreV1Api, V1Eviction, V1ObjectMeta
from kubernetes.client.exceptions import ApiException, OpenApiException
from kubernetes.config import ConfigException
from urllib3.util.retry import Retry

from client._chaos import FATAL_OUTCOMES, ChaosPlan, Mode, Round
from client._k8s import SERVICE_ACCOUNT_DIR, load_api_configuration

__all__ = ["ConfigurationError", "PodApi", "api_client", "run_against", "run_chaos"]

_RUNNING = "status.phase=Running"

#: The urllib3 retry policy of the API client: none. urllib3's default retries a GET or a
#: DELETE that timed out or lost its connection three more times, each try with the full
#: per-request timeout, which would make one call cost four. ``total=False`` (rather
#: than 0) also lets the first error surface as it is (a read timeout, a dropped
#: connection) instead of as "Max retries exceeded"; a failed round ends the run anyway.
_NO_RETRIES = Retry(total=False)

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


class ConfigurationError(Exception):
    """No API server to talk to: neither in-cluster configuration nor a kubeconfig."""


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
        if result.outcome in FATAL_OUTCOMES or number == plan.rounds:
            break
        next_start = clock() + plan.interval
        if plan.duration is not None and next_start - started > plan.duration:
            break
        await sleep(plan.interval)
    return done


def api_client(server: str | None, kubeconfig: str | None) -> ApiClient:
    """A client for ``server`` (no credentials), else in-cluster config, else the kubeconfig.

    Each request is tried once (see :data:`_NO_RETRIES`).

    Raises:
        ConfigurationError: No configuration found.
    """
    if server:
        configuration = Configuration(host=server.rstrip("/"))
    else:
        try:
            configuration = load_api_configuration(SERVICE_ACCOUNT_DIR, kubeconfig)
        except (ConfigException, OSError) as exc:
            raise ConfigurationError(str(exc)) from exc
    # Read by ApiClient when it builds its urllib3 pool: set before creating it.
    configuration.retries = _NO_RETRIES
    return ApiClient(configuration)


async def run_against(
    plan: ChaosPlan,
    server: str | None,
    kubeconfig: str | None,
    timeout: float,
    report: Callable[[Round], None],
    random: _random.Random,
) -> list[Round]:
    """Configure a client (see :func:`api_client`), run the plan, close the client.

    Raises:
        ConfigurationError: No configuration found.
    """
    client = await asyncio.to_thread(api_client, server, kubeconfig)
    try:
        return await run_chaos(plan, PodApi(client, timeout), report, random=random)
    finally:
        client.close()  # type: ignore[no-untyped-call]  # generated code without annotations
