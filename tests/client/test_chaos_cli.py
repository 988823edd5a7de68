"""``python -m client chaos`` against a fake Kubernetes API server on 127.0.0.1.

No cluster can run here, so the API server is a fake (the same approach as
tests/resolvers/fake_k8s.py): a small HTTP server that keeps Pods and answers
the three calls the tool makes as the real API server does: the pod list
(honouring ``labelSelector`` and ``fieldSelector=status.phase=Running``),
DELETE of a pod (a graceful delete marks it terminating with its own grace
period, ``gracePeriodSeconds=0`` removes it at once) and the ``policy/v1``
Eviction subresource (429 while a PodDisruptionBudget forbids it). The test
makes it refuse with 403, fail with 500, lose a pod, never answer or drop the
connection, and checks every request the tool sent. The real ``kubernetes``
client and the real CLI run against it.
"""

from __future__ import annotations

import asyncio
import copy
import io
import json
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from time import monotonic
from typing import Any, Literal
from urllib.parse import parse_qs, urlsplit

import pytest
from kubernetes.client import ApiClient, Configuration

from client import cli as _cli
from client._chaos import MAX_COUNT, ChaosPlan, Mode, Round, exit_code
from client._chaos_k8s import PodApi, run_chaos
from client.cli import main_async
from client.testing import FakeClock
from tests.fake_http import JsonHandler, LoopbackHttpServer

NS = "meshdemo"
USERS = "app.kubernetes.io/instance=meshdemo,app.kubernetes.io/component=users"
PODS = "/api/v1/namespaces/"
#: How the fake fails a request: an HTTP status, "silent" or "drop" (see FakePodsApi.fail).
Failure = int | Literal["silent", "drop"]
#: Seconds a test may take at most (a hang guard, well above any bound it checks).
TEST_BOUND = 30.0
#: What a loaded machine may add to the command's bound (as in tests/cli/test_deadlines.py).
SLACK = 2.0


def pod(name: str, component: str = "users", phase: str = "Running", grace: int = 45) -> Any:
    """A Pod as the API serves it (only the fields the tool reads, and labels)."""
    labels = {"app.kubernetes.io/instance": "meshdemo", "app.kubernetes.io/component": component}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NS, "labels": labels},
        "spec": {"terminationGracePeriodSeconds": grace},
        "status": {"phase": phase},
    }


def _status(code: int, reason: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
            "reason": reason, "message": f"fake: {reason}"}  # fmt: skip


def matches(labels: dict[str, str], selector: str) -> bool:
    """Equality-based label selectors: k=v, k==v, k!=v, k (exists), comma-separated."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term not in labels:
            return False
    return True


class FakePodsApi(LoopbackHttpServer):
    """Pods, the requests seen, and the failures to answer with; thread-safe."""

    def __init__(self, pods: list[Any]) -> None:
        self._lock = threading.Lock()
        self.pods = {p["metadata"]["name"]: copy.deepcopy(p) for p in pods}
        self.requests: list[dict[str, Any]] = []
        self.failures: dict[str, list[Failure]] = {"list": [], "delete": [], "evict": []}
        self.pdb_allows = True
        # Set by close(): the requests held by a "silent" failure end (unanswered).
        self.released = threading.Event()
        super().__init__(_handler_for(self))

    def close(self) -> None:
        self.released.set()
        super().close()

    def seen(self, method: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r["method"] == method]

    def fail(self, verb: str, *failures: Failure) -> None:
        """Fail the next ``verb`` requests, one per failure: an HTTP status, ``"silent"``
        (read the request, never answer) or ``"drop"`` (close the connection unanswered)."""
        with self._lock:
            self.failures[verb].extend(failures)

    # Serving (handler threads).

    def record(self, method: str, path: str, query: dict[str, str], body: Any) -> Failure | None:
        """Log the request; the failure to fail it with, if one is queued."""
        verb = {"GET": "list", "DELETE": "delete", "POST": "evict"}[method]
        with self._lock:
            self.requests.append({"method": method, "path": path, "query": query, "body": body})
            queued = self.failures[verb]
            return queued.pop(0) if queued else None

    def listing(self, namespace: str, query: dict[str, str]) -> tuple[int, Any]:
        fields = query.get("fieldSelector", "")
        if fields not in ("", "status.phase=Running"):
            return 400, _status(400, "BadRequest")
        with self._lock:
            items = [copy.deepcopy(p) for p in self.pods.values()
                     if p["metadata"]["namespace"] == namespace
                     and matches(p["metadata"]["labels"], query.get("labelSelector", ""))
                     and (not fields or p["status"]["phase"] == "Running")]  # fmt: skip
        return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def delete(self, name: str, grace: str | None) -> tuple[int, Any]:
        with self._lock:
            found = self.pods.get(name)
            if found is None:
                return 404, _status(404, "NotFound")
            if grace == "0":
                del self.pods[name]
            else:  # graceful: terminating, still Running until the kubelet is done
                meta = found["metadata"]
                meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
                meta["deletionGracePeriodSeconds"] = int(
                    grace or found["spec"]["terminationGracePeriodSeconds"]
                )
            return 200, copy.deepcopy(found)

    def evict(self, name: str, body: Any) -> tuple[int, Any]:
        if body.get("kind") != "Eviction" or body.get("apiVersion") != "policy/v1":
            return 400, _status(400, "BadRequest")
        if not self.pdb_allows:
            return 429, _status(429, "TooManyRequests")
        code, _ = self.delete(name, None)
        return (201, _status(201, "Success")) if code == 200 else (code, _status(code, "NotFound"))


def _handler_for(api: FakePodsApi) -> type[BaseHTTPRequestHandler]:
    class Handler(JsonHandler):
        def _request(self) -> tuple[str, list[str], dict[str, str], Any]:
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            body = json.loads(raw) if raw else None
            parts = url.path.removeprefix(PODS).split("/")
            failure = api.record(self.command, url.path, query, body)
            if failure == "silent":
                api.released.wait(TEST_BOUND)
            if isinstance(failure, str):  # no answer at all: the connection closes
                self.close_connection = True
                return "", [], {}, None
            if failure is not None:
                self.send_json(failure, _status(failure, "Failure"))
                return "", [], {}, None
            return url.path, parts, query, body

        def do_GET(self) -> None:
            path, parts, query, _ = self._request()
            if path and len(parts) == 2 and parts[1] == "pods":
                self.send_json(*api.listing(parts[0], query))
            elif path:
                self.send_json(404, _status(404, "NotFound"))

        def do_DELETE(self) -> None:
            path, parts, query, _ = self._request()
            if path and len(parts) == 3 and parts[1] == "pods":
                self.send_json(*api.delete(parts[2], query.get("gracePeriodSeconds")))
            elif path:
                self.send_json(404, _status(404, "NotFound"))

        def do_POST(self) -> None:
            path, parts, _, body = self._request()
            if path and len(parts) == 4 and parts[1] == "pods" and parts[3] == "eviction":
                self.send_json(*api.evict(parts[2], body or {}))
            elif path:
                self.send_json(404, _status(404, "NotFound"))

    return Handler


@pytest.fixture
def fake() -> Iterator[FakePodsApi]:
    server = FakePodsApi(
        [
            pod("users-a"),
            pod("users-b"),
            pod("users-c"),
            pod("users-pending", phase="Pending"),
            pod("postgres-0", component="postgresql"),
        ]
    )
    server.start()
    try:
        yield server
    finally:
        server.close()


async def chaos(fake: FakePodsApi, *args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    argv = ["chaos", "--server", fake.url, "--namespace", NS, "--selector", USERS, *args]
    code = await main_async(argv, env={}, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def write_kubeconfig(directory: Path, server: str) -> Path:
    """A kubeconfig whose current context is ``server`` with a token nobody checks."""
    path = directory / "config"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server}}],
        "users": [{"name": "me", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
        "current-context": "fake",
    }
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


USER_PODS = {"users-a", "users-b", "users-c"}


async def test_default_delete_lists_running_matches_and_leaves_the_pods_own_grace(
    fake: FakePodsApi,
) -> None:
    code, out, err = await chaos(fake)
    assert (code, err) == (0, "")
    (listing,) = fake.seen("GET")
    assert listing["path"] == f"{PODS}{NS}/pods"
    assert listing["query"]["labelSelector"] == USERS
    assert listing["query"]["fieldSelector"] == "status.phase=Running"
    (delete,) = fake.seen("DELETE")
    victim = delete["path"].rsplit("/", 1)[1]
    assert victim in USER_PODS
    assert "gracePeriodSeconds" not in delete["query"], "the drain path: no grace override"
    assert fake.pods[victim]["metadata"]["deletionGracePeriodSeconds"] == 45
    assert f"delete {NS}/{victim} (the pod's own grace period: 45 s) -> deleted" in out
    assert len(out.splitlines()) == 1


async def test_force_deletes_with_grace_zero(fake: FakePodsApi) -> None:
    code, out, _ = await chaos(fake, "--force", "--json")
    assert code == 0
    (delete,) = fake.seen("DELETE")
    assert delete["query"]["gracePeriodSeconds"] == "0"
    (result,) = lines(out)
    assert result["action"] == "force-delete" and result["grace_seconds"] == 0
    assert result["outcome"] == "deleted" and result["pod"] not in fake.pods


async def test_evict_posts_a_policy_v1_eviction(fake: FakePodsApi) -> None:
    code, out, _ = await chaos(fake, "--evict", "--json")
    assert code == 0
    assert fake.seen("DELETE") == []
    (post,) = fake.seen("POST")
    victim = post["path"].split("/")[-2]
    assert post["path"] == f"{PODS}{NS}/pods/{victim}/eviction"
    assert post["body"]["kind"] == "Eviction" and post["body"]["apiVersion"] == "policy/v1"
    assert post["body"]["metadata"] == {"name": victim, "namespace": NS}
    assert lines(out)[0]["outcome"] == "evicted"


async def test_a_pdb_refusal_is_reported_and_the_run_goes_on(fake: FakePodsApi) -> None:
    fake.pdb_allows = False
    code, out, err = await chaos(fake, "--evict", "--count", "2", "--interval", "0.01")
    assert (code, err) == (0, "")
    assert len(fake.seen("POST")) == 2, "the second round ran after the refusal"
    assert out.count("-> refused: a PodDisruptionBudget allows no disruption now (429)") == 2
    assert all("deletionTimestamp" not in p["metadata"] for p in fake.pods.values())


async def test_count_is_honoured_and_terminating_pods_are_not_picked_again(
    fake: FakePodsApi,
) -> None:
    code, out, _ = await chaos(fake, "--count", "3", "--interval", "0.01", "--json")
    assert code == 0
    assert len(fake.seen("DELETE")) == 3
    victims = [r["pod"] for r in lines(out)]
    assert set(victims) == USER_PODS, "each round picks a pod that is not terminating yet"
    assert [r["round"] for r in lines(out)] == [1, 2, 3]
    assert "postgres-0" in fake.pods and "deletionTimestamp" not in fake.pods["postgres-0"]


async def test_count_beyond_the_pods_reports_no_pod_rounds(fake: FakePodsApi) -> None:
    code, out, _ = await chaos(fake, "--force", "--count", "5", "--interval", "0.01", "--json")
    assert code == 0
    outcomes = [r["outcome"] for r in lines(out)]
    assert outcomes == ["deleted"] * 3 + ["no-pod"] * 2
    assert len(fake.seen("DELETE")) == 3


async def test_dry_run_changes_nothing(fake: FakePodsApi) -> None:
    before = copy.deepcopy(fake.pods)
    code, out, _ = await chaos(fake, "--dry-run", "--count", "2", "--interval", "0.01", "--force")
    assert code == 0
    assert fake.seen("DELETE") == [] and fake.seen("POST") == []
    assert fake.pods == before
    assert out.count("would force-delete meshdemo/users-") == 2


async def test_forbidden_is_reported_clearly_and_ends_the_run(fake: FakePodsApi) -> None:
    fake.fail("delete", 403)
    code, out, err = await chaos(fake, "--count", "3", "--interval", "0.01")
    assert code == _cli.EXIT_AUTH
    assert len(fake.seen("DELETE")) == 1, "no point in trying again"
    assert "403 Forbidden" in err and "RBAC" in err
    assert "-> forbidden" in out


async def test_forbidden_list_is_reported(fake: FakePodsApi) -> None:
    fake.fail("list", 403)
    code, out, err = await chaos(fake, "--json")
    assert code == _cli.EXIT_AUTH
    assert lines(out)[0]["outcome"] == "forbidden" and lines(out)[0]["pod"] is None
    assert "refused to list pods (403 Forbidden)" in err


async def test_a_server_error_fails_the_run(fake: FakePodsApi) -> None:
    fake.fail("list", 500)
    code, _, err = await chaos(fake, "--count", "2", "--interval", "0.01")
    assert code == _cli.EXIT_RPC
    assert "HTTP 500" in err
    assert len(fake.seen("GET")) == 1


async def test_a_pod_gone_before_the_delete_is_not_an_error(fake: FakePodsApi) -> None:
    fake.fail("delete", 404)
    code, out, _ = await chaos(fake, "--json")
    assert code == 0
    assert lines(out)[0]["outcome"] == "gone"


async def test_no_matching_pod_exits_1(fake: FakePodsApi) -> None:
    out, err = io.StringIO(), io.StringIO()
    argv = ["chaos", "--server", fake.url, "--namespace", NS, "--selector", "app=nothing"]
    code = await main_async(argv, env={}, stdout=out, stderr=err)
    assert code == 1
    assert "no-pod: no Running pod in meshdemo matches app=nothing" in out.getvalue()
    assert fake.seen("DELETE") == []


async def test_an_unreachable_api_server_fails_cleanly() -> None:
    closed = FakePodsApi([])
    closed.start()
    url = closed.url
    closed.close()  # the port is free now: nothing listens there
    out, err = io.StringIO(), io.StringIO()
    argv = ["chaos", "--server", url, "--namespace", NS, "--selector", USERS, "--timeout", "2"]
    code = await main_async(argv, env={}, stdout=out, stderr=err)
    assert code == 1
    assert "list pods" in err.getvalue()


# A dead API server: it reads each request, then never answers ("silent") or closes the
# connection ("drop"). urllib3's default under the kubernetes client would send a timed-out
# or dropped GET or DELETE three more times, each try with the full --timeout; the tool
# sends each call once, so the failed round (exit 1) comes well within the command's bound
# (exit 3 would be the bound cutting it short).

#: Tries urllib3's default would make of one call: the fake fails every one of them.
DEFAULT_TRIES = 1 + 3
DEAD = {"silent": "Read timed out", "drop": "Remote end closed connection"}


async def timed(argv: list[str]) -> tuple[int, str, str, float, float]:
    """Run the CLI, bounded by TEST_BOUND: (code, out, err, seconds taken, the command's bound)."""
    bound = _cli.COMMANDS["chaos"].budget(_cli.build_parser({}).parse_args(argv))
    assert bound is not None
    out, err = io.StringIO(), io.StringIO()
    started = monotonic()
    run = main_async(argv, env={}, stdout=out, stderr=err)
    code = await asyncio.wait_for(run, TEST_BOUND)
    return code, out.getvalue(), err.getvalue(), monotonic() - started, bound


@pytest.mark.parametrize("how", sorted(DEAD))
@pytest.mark.parametrize(
    ("verb", "method", "args"),
    [("list", "GET", []), ("delete", "DELETE", []), ("evict", "POST", ["--evict"])],
)
async def test_a_dead_api_server_is_asked_once_and_the_run_ends_within_its_bound(
    fake: FakePodsApi, how: Failure, verb: str, method: str, args: list[str]
) -> None:
    fake.fail(verb, *[how] * DEFAULT_TRIES)
    argv = ["chaos", "--server", fake.url, "--namespace", NS, "--selector", USERS, *args,
            "--timeout", "0.5", "--count", "3", "--interval", "0.01"]  # fmt: skip
    code, out, err, took, bound = await timed(argv)
    assert code == _cli.EXIT_RPC, err
    assert len(fake.seen(method)) == 1, "one try, no retry"
    assert f"{'list pods' if verb == 'list' else verb}: " in err
    assert DEAD[str(how)] in err and "Max retries" not in err, err
    assert len(out.splitlines()) == 1, "the failed round ended the run"
    assert took <= bound + SLACK, (took, bound)  # a hang guard, not a speed test


async def test_a_dead_api_server_from_the_kubeconfig_is_asked_once(
    fake: FakePodsApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    silent: Failure = "silent"
    fake.fail("list", *[silent] * DEFAULT_TRIES)
    kubeconfig = write_kubeconfig(tmp_path, fake.url)
    argv = ["chaos", "--kubeconfig", str(kubeconfig), "--namespace", NS, "--selector", USERS,
            "--timeout", "0.5"]  # fmt: skip
    code, _, err, took, bound = await timed(argv)
    assert code == _cli.EXIT_RPC, err
    assert len(fake.seen("GET")) == 1, "one try, no retry"
    assert DEAD["silent"] in err, err
    assert took <= bound + SLACK, (took, bound)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--namespace", "kube-system", "--selector", USERS], "refusing namespace kube-system"),
        (["--namespace", "kube-public", "--selector", USERS], "refusing namespace kube-public"),
        (["--namespace", NS, "--selector", ""], "an empty selector matches every pod"),
        (["--namespace", NS, "--selector", "  "], "an empty selector matches every pod"),
        (["--namespace", "Bad_NS", "--selector", USERS], "bad namespace"),
        (["--namespace", NS, "--selector", USERS, "--count", "0"], "--duration is required"),
        (["--namespace", NS, "--selector", USERS, "--count", str(MAX_COUNT + 1)], "must be in"),
        (["--namespace", NS, "--selector", USERS, "--interval", "0"], "must be positive"),
        (["--namespace", NS, "--selector", USERS, "--force", "--evict"], "not allowed with"),
    ],
)
async def test_usage_errors_exit_2_and_send_nothing(
    fake: FakePodsApi, args: list[str], message: str
) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = await main_async(["chaos", "--server", fake.url, *args], env={}, stdout=out, stderr=err)
    assert code == _cli.EXIT_USAGE
    assert message in err.getvalue()
    assert fake.requests == []


async def test_duration_bounds_a_run_without_a_count(fake: FakePodsApi) -> None:
    for name in ("users-d", "users-e", "users-f"):
        fake.pods[name] = pod(name)
    plan = ChaosPlan(NS, USERS, Mode.DELETE, count=0, interval=3.0, duration=10.0)
    time = FakeClock(auto_advance=True)
    seen: list[Round] = []
    with ApiClient(Configuration(host=fake.url)) as client:
        rounds = await run_chaos(
            plan, PodApi(client), seen.append, random=random.Random(1),
            clock=time, sleep=time.sleep,
        )  # fmt: skip
    # Rounds start at 0, 3, 6 and 9 s; the one at 12 s would be past the 10 s bound.
    assert [r.outcome for r in rounds] == ["deleted"] * 4
    assert time.sleeps == [3.0, 3.0, 3.0]
    assert seen == rounds


async def test_a_seed_repeats_the_pick(fake: FakePodsApi) -> None:
    first = await chaos(fake, "--dry-run", "--seed", "7", "--json")
    second = await chaos(fake, "--dry-run", "--seed", "7", "--json")
    assert lines(first[1])[0]["pod"] == lines(second[1])[0]["pod"]


def test_plan_validation() -> None:
    with pytest.raises(ValueError, match="kube-node-lease"):
        ChaosPlan("kube-node-lease", USERS)
    with pytest.raises(ValueError, match="empty selector"):
        ChaosPlan(NS, "")
    with pytest.raises(ValueError, match="duration must be in"):
        ChaosPlan(NS, USERS, duration=0)
    assert ChaosPlan(NS, USERS).rounds == 1
    assert ChaosPlan(NS, USERS, count=0, duration=5).rounds == MAX_COUNT


def test_exit_codes_are_the_clis() -> None:
    def one(outcome: str) -> Round:
        return Round(1, 1, "t", NS, None, "delete", None, False, outcome)

    assert exit_code([one("deleted")]) == _cli.EXIT_OK
    assert exit_code([one("refused")]) == _cli.EXIT_OK
    assert exit_code([one("forbidden")]) == _cli.EXIT_AUTH
    assert exit_code([one("failed")]) == _cli.EXIT_RPC
    assert exit_code([one("no-pod"), one("no-pod")]) == _cli.EXIT_RPC
    assert exit_code([]) == _cli.EXIT_RPC


def test_chaos_is_in_the_cli_help() -> None:
    help_text = _cli.build_parser({}).format_help()
    assert "chaos" in help_text


async def test_outside_a_cluster_the_kubeconfig_is_used(
    fake: FakePodsApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    kubeconfig = write_kubeconfig(tmp_path, fake.url)
    out, err = io.StringIO(), io.StringIO()
    argv = ["chaos", "--kubeconfig", str(kubeconfig), "--namespace", NS, "--selector", USERS]
    code = await main_async(argv, env={}, stdout=out, stderr=err)
    assert (code, err.getvalue()) == (0, "")
    assert len(fake.seen("DELETE")) == 1


async def test_no_configuration_at_all_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    out, err = io.StringIO(), io.StringIO()
    missing = str(tmp_path / "no-such-kubeconfig")
    argv = ["chaos", "--kubeconfig", missing, "--namespace", NS, "--selector", USERS]
    code = await main_async(argv, env={}, stdout=out, stderr=err)
    assert code == 1
    assert "no Kubernetes configuration" in err.getvalue() and missing in err.getvalue()


def test_the_cli_does_not_import_kubernetes_until_chaos_runs() -> None:
    """Every other command would pay the ``kubernetes`` import (most of a second)."""
    code = "import sys, client.cli; print('kubernetes' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    )
    assert result.stdout.strip() == "False"
