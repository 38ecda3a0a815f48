"""The Kubernetes manifests under ``deploy/``, checked offline against Kubernetes and the code.

Every kustomization renders with ``kubectl kustomize``; every built-in kind passes
``kubernetes-validate`` in strict mode (unknown fields are errors) for a pinned Kubernetes
version; each custom resource passes the schema written from its CRD (``deploy/schemas/``),
and the pod templates inside them pass as core/v1 pod specs. Then the manifests are held to
the code: probe paths answer on a real server, the autoscaling metrics are in the metrics
contract and on a real ``/metrics``, the PrometheusRule and the dashboards are what
``resnetkit monitor`` generates, every environment variable is one the code reads, and every
flag is one the real parsers accept.
"""

from __future__ import annotations

import copy
import json
import re
import runpy
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SCHEMAS = DEPLOY / "schemas"
#: The oldest Kubernetes the manifests target (lifecycle.preStop.sleep is on by default
#: from 1.30); kubernetes-validate checks against the schemas of this release.
KUBERNETES_VERSION = "1.32.0"
KUSTOMIZATIONS = (
    "base",
    "overlays/keda",
    "overlays/kserve",
    "overlays/postgres-demo",
    "overlays/training",
    "overlays/pytorchjob",
    "prometheus-adapter",
)
#: Custom resources and their schema files: apiVersion/kind -> deploy/schemas/<file>.
CUSTOM_KINDS = {
    ("monitoring.coreos.com/v1", "PrometheusRule"): "prometheusrule.monitoring.coreos.com-v1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor.monitoring.coreos.com-v1.json",
    ("keda.sh/v1alpha1", "ScaledObject"): "scaledobject.keda.sh-v1alpha1.json",
    ("kubeflow.org/v1", "PyTorchJob"): "pytorchjob.kubeflow.org-v1.json",
}
CUSTOM_KINDS["serving.kserve.io/v1beta1", "InferenceService"] = (
    "inferenceservice.serving.kserve.io-v1beta1.json"
)
#: Variables set for a tool other than resnetkit, and the tool that reads them.
FOREIGN_ENV = {"PROTOCOL": "KServe: the custom container speaks the V2 protocol"}

kubectl = shutil.which("kubectl")
pytestmark = pytest.mark.skipif(kubectl is None, reason="kubectl is not installed (make does)")


def render(kustomization: str) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize deploy/<kustomization>`` prints."""
    assert kubectl is not None
    done = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / kustomization)], capture_output=True, text=True
    )
    assert done.returncode == 0, f"kubectl kustomize deploy/{kustomization}: {done.stderr}"
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(name) for name in KUSTOMIZATIONS}


def all_objects(rendered: dict[str, list[dict[str, Any]]]) -> Iterator[tuple[str, dict]]:
    for name, objects in rendered.items():
        for obj in objects:
            yield name, obj


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod specs inside a workload, built-in or custom."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in {"Deployment", "StatefulSet", "Job"}:
        return [spec["template"]["spec"]]
    if kind == "PyTorchJob":
        return [r["template"]["spec"] for r in spec["pytorchReplicaSpecs"].values()]
    if kind == "InferenceService":
        predictor = spec["predictor"]
        return [{k: v for k, v in predictor.items() if k in POD_SPEC_FIELDS}]
    return []


POD_SPEC_FIELDS = {
    "containers", "volumes", "securityContext", "terminationGracePeriodSeconds",
    "automountServiceAccountToken", "serviceAccountName", "affinity",
}  # fmt: skip


def resnetkit_containers(rendered: dict[str, list[dict]]) -> Iterator[tuple[str, dict, dict]]:
    """``(kustomization, workload, container)`` for each container of our images."""
    for name, obj in all_objects(rendered):
        for spec in pod_specs(obj):
            for container in spec["containers"]:
                if container["image"].split(":")[0] in {"resnetkit-serve", "resnetkit-full"}:
                    yield name, obj, container


def _k8s_validate(obj: dict[str, Any]) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def _custom_validate(obj: dict[str, Any]) -> None:
    import jsonschema

    schema = json.loads((SCHEMAS / CUSTOM_KINDS[obj["apiVersion"], obj["kind"]]).read_text())
    jsonschema.Draft202012Validator(schema).validate(obj)
    for i, spec in enumerate(pod_specs(obj)):  # the pods a custom resource makes are core pods
        _k8s_validate(
            {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": f"p{i}"}, "spec": spec}
        )


def validate(obj: dict[str, Any]) -> None:
    """Strict validation of any object we ship (raises on the first error)."""
    if (obj["apiVersion"], obj["kind"]) in CUSTOM_KINDS:
        _custom_validate(obj)
    else:
        _k8s_validate(obj)


# --- Rendering and schemas -------------------------------------------------------------------


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_kustomization_renders(kustomization: str) -> None:
    assert render(kustomization)


def test_every_object_passes_strict_validation_with_no_warnings(rendered: dict) -> None:
    # A built-in kind without a schema would be a kubernetes-validate warning: it raises here.
    failures = []
    for name, obj in all_objects(rendered):
        try:
            validate(obj)
        except Exception as exc:  # every failure is collected and shown
            failures.append(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {exc}")
    assert failures == []


def test_the_custom_resources_we_ship_all_have_a_schema(rendered: dict) -> None:
    kinds = {(o["apiVersion"], o["kind"]) for _, o in all_objects(rendered)}
    assert set(CUSTOM_KINDS) <= kinds
    assert sorted(p.name for p in SCHEMAS.glob("*.json")) == sorted(CUSTOM_KINDS.values())


@pytest.mark.parametrize(
    ("kustomization", "kind", "path"),
    [
        ("base", "Deployment", ("spec", "template", "spec", "containers", 0)),
        ("overlays/keda", "ScaledObject", ("spec",)),
        ("overlays/kserve", "InferenceService", ("spec", "predictor", "containers", 0)),
        ("overlays/pytorchjob", "PyTorchJob", ("spec", "pytorchReplicaSpecs", "Worker")),
        ("base", "ServiceMonitor", ("spec", "endpoints", 0)),
    ],
)
def test_an_unknown_key_is_an_error(
    rendered: dict, kustomization: str, kind: str, path: tuple[str | int, ...]
) -> None:
    obj = copy.deepcopy(find(rendered[kustomization], kind))
    node: Any = obj
    for key in path:
        node = node[key]
    node["replica"] = 2  # a typo a user could make
    with pytest.raises(Exception, match="replica"):
        validate(obj)


# --- Generated content equals what the code generates -----------------------------------------


def test_the_generated_files_are_up_to_date() -> None:
    stale = runpy.run_path(str(ROOT / "scripts" / "gen_deploy.py"))["stale_files"]()
    assert stale == [], "run: python scripts/gen_deploy.py"


def test_the_prometheus_rule_holds_the_rules_resnetkit_monitor_generates(rendered: dict) -> None:
    from resnetkit.monitor.slo import generate_rules

    rule = find(rendered["base"], "PrometheusRule")
    assert rule["spec"]["groups"] == generate_rules()["groups"]


def test_the_dashboards_configmap_holds_the_generated_dashboards(rendered: dict) -> None:
    from resnetkit.monitor.dashboards import generate_dashboards

    config_map = find(rendered["base"], "ConfigMap", "resnetkit-dashboards")
    shipped = {name: json.loads(text) for name, text in config_map["data"].items()}
    assert shipped == {f"{name}.json": board for name, board in generate_dashboards().items()}
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"


# --- Probes, ports and metrics against a real server ------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from tests.export.rundir import trained_run_dir
    from tests.serve.server import in_process

    run_dir = trained_run_dir(str(tmp_path_factory.getbasetemp()))
    with in_process([str(run_dir)]) as (client, _state):
        yield client


def serve_args(container: dict[str, Any]) -> Any:
    from resnetkit.cli.main import build_parser

    assert container["command"] == ["resnetkit"] and container["args"][0] == "serve"
    return build_parser("serve").parse_args(container["args"])


def serving_containers(rendered: dict) -> list[tuple[str, dict]]:
    return [
        (name, c) for name, _, c in resnetkit_containers(rendered) if c["command"] == ["resnetkit"]
    ]


def test_probes_ask_real_routes_on_the_port_the_server_listens_on(
    rendered: dict, server: Any
) -> None:
    containers = serving_containers(rendered)
    assert {name for name, _ in containers} >= {"base", "overlays/kserve"}
    for name, container in containers:
        args = serve_args(container)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert args.port in ports.values() and args.grpc_port in ports.values(), name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = container[probe]["httpGet"]
            assert ports.get(get["port"], get["port"]) == args.port, f"{name} {probe}"
            answer = server.get(get["path"])
            assert answer.status_code == 200, f"{name} {probe} {get['path']}: {answer.text}"


def test_the_service_exposes_the_containers_named_ports(rendered: dict) -> None:
    service = find(rendered["base"], "Service", "resnetkit-serve")
    deployment = find(rendered["base"], "Deployment", "resnetkit-serve")
    named = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} == named == {"http", "grpc"}
    grpc = next(p for p in service["spec"]["ports"] if p["name"] == "grpc")
    assert grpc["appProtocol"] == "kubernetes.io/h2c"


def test_termination_grace_covers_the_pre_stop_sleep_and_the_servers_drain(rendered: dict) -> None:
    from resnetkit.serve.config import ServeConfig
    from resnetkit.serve.process import DRAIN_IDLE_S

    config = ServeConfig(refs=("m.onnx",))  # the defaults the CLI runs with
    drain_s = config.drain_timeout_s
    keep_alive_s = min(config.keep_alive_s, DRAIN_IDLE_S)  # what SIGTERM waits for idle clients
    servers = [
        (name, spec, c)
        for name, obj in all_objects(rendered)
        for spec in pod_specs(obj)
        for c in spec["containers"]
        if c.get("command") == ["resnetkit"]
    ]
    assert servers
    for name, spec, container in servers:
        pre_stop_s = container["lifecycle"]["preStop"]["sleep"]["seconds"]
        grace_s = spec["terminationGracePeriodSeconds"]
        assert grace_s > pre_stop_s + keep_alive_s + drain_s, name


def test_the_autoscaling_metrics_are_in_the_contract_and_on_a_real_metrics_page(
    rendered: dict, server: Any
) -> None:
    from resnetkit.telemetry import METRICS_BY_NAME

    adapter = yaml.safe_load((DEPLOY / "prometheus-adapter" / "config.yaml").read_text())
    exposed = {}
    for rule in adapter["rules"]:
        series = re.match(r"(\w+)\{", rule["seriesQuery"]).group(1)  # type: ignore[union-attr]
        assert series in METRICS_BY_NAME and METRICS_BY_NAME[series].kind == "gauge"
        # namespace and pod are the scrape's target labels, never the metric's own
        assert not {"namespace", "pod"} & set(METRICS_BY_NAME[series].labels)
        exposed[rule["name"]["as"]] = series
    hpa = find(rendered["base"], "HorizontalPodAutoscaler")
    pods_metrics = [
        m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"
    ]
    assert pods_metrics and set(pods_metrics) <= set(exposed)
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Pods", "Resource"}

    scaled = find(rendered["overlays/keda"], "ScaledObject")
    queries = [
        t["metadata"]["query"] for t in scaled["spec"]["triggers"] if t["type"] == "prometheus"
    ]
    keda_series = {re.search(r"(resnetkit_\w+)\{", q).group(1) for q in queries}  # type: ignore[union-attr]
    assert keda_series <= set(METRICS_BY_NAME)

    page = server.get("/metrics").text
    for series in {*exposed.values(), *keda_series}:
        labels = METRICS_BY_NAME[series].labels
        sample = re.search(rf"^{series}(\{{[^}}]*\}})? \S+$", page, re.MULTILINE)
        assert sample is not None, f"{series} has no sample on /metrics"
        assert all(f'{label}="' in (sample.group(1) or "") for label in labels)


# --- Environment variables, flags, files --------------------------------------------------------


def variables_the_code_reads() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "src" / "resnetkit").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"environ(?:\.get)?[(\[]\s*\"(\w+)\"", text))
        names |= set(re.findall(r"^\w*ENV\w* = \"(\w+)\"$", text, re.MULTILINE))
    return names


def test_every_environment_variable_is_one_the_code_or_a_named_tool_reads(rendered: dict) -> None:
    known = variables_the_code_reads()
    assert {"RESNETKIT_REGISTRY", "RESNETKIT_CACHE", "RESNETKIT_DATA"} <= known
    for name, _, container in resnetkit_containers(rendered):
        for var in container.get("env", []):
            assert var["name"] in known | set(FOREIGN_ENV), f"{name}: nothing reads {var['name']}"


def test_secrets_come_by_reference_and_only_the_demo_creates_any(rendered: dict) -> None:
    for name, obj in all_objects(rendered):
        if obj["kind"] == "Secret":
            assert name == "overlays/postgres-demo"
            assert all("demo-only" in v for v in _decoded(obj).values())
    registry = {
        c["name"]: v["valueFrom"]["secretKeyRef"]
        for _, _, c in resnetkit_containers(rendered)
        for v in c.get("env", [])
        if v["name"] == "RESNETKIT_REGISTRY"
    }
    expected = {"name": "resnetkit-registry", "key": "url"}
    assert registry and all(ref == expected for ref in registry.values())


def _decoded(secret: dict[str, Any]) -> dict[str, str]:
    import base64

    return {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}


def _expand(arg: str, env: set[str]) -> str:
    """``$(VAR)`` as the kubelet expands it; JOB_COMPLETION_INDEX is an Indexed Job's."""
    for var in re.findall(r"\$\((\w+)\)", arg):
        assert var in env | {"JOB_COMPLETION_INDEX"}, f"$({var}) is never set"
        arg = arg.replace(f"$({var})", "0")
    return arg


def test_every_flag_in_the_containers_is_one_the_real_parsers_accept(rendered: dict) -> None:
    from torch.distributed.run import get_args_parser

    from resnetkit.cli.main import build_parser

    checked = set()
    for name, _, container in resnetkit_containers(rendered):
        env = {v["name"] for v in container.get("env", [])}
        args = [_expand(a, env) for a in container["args"]]
        if container["command"] == ["torchrun"]:
            launch = get_args_parser().parse_args(args)
            assert launch.module and launch.training_script == "resnetkit.cli.main", name
            args = launch.training_script_args
        elif container["command"] != ["resnetkit"]:
            pytest.fail(f"{name}: unknown command {container['command']}")
        try:
            build_parser(args[0]).parse_args(args)
        except SystemExit:
            pytest.fail(f"{name}: resnetkit refuses {' '.join(args)} (its message is above)")
        checked.add(args[0])
    assert checked == {"serve", "train"}


def test_the_recipe_each_training_job_names_is_mounted(rendered: dict) -> None:
    recipes = DEPLOY / "components" / "training" / "recipes"
    for name, _, container in resnetkit_containers(rendered):
        config = [a.split("=", 1)[1] for a in container["args"] if a.startswith("--config=")]
        if not config:
            continue
        mount = next(m for m in container["volumeMounts"] if m["name"] == "recipes")
        path = Path(config[0])
        assert path.parent == Path(mount["mountPath"]) and (recipes / path.name).is_file(), name
