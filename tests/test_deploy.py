"""deploy/k8s: every manifest is valid against the Kubernetes schemas (offline, kubernetes-validate), and the
ports, probes, annotations and arguments agree with edge-server's own command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from splitdet.edge_server.cli import build_parser

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30"  # native gRPC probes are GA from 1.27
ONE_OFF = {"models-loader.yaml"}  # applied by hand, not by the kustomization


def documents(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((K8S / name).read_text()) if doc]


MANIFESTS = sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")
RESOURCES = {(doc["kind"], doc["metadata"]["name"]): doc for name in MANIFESTS for doc in documents(name)}
DEPLOYMENT = RESOURCES["Deployment", "edge"]
POD = DEPLOYMENT["spec"]["template"]
(CONTAINER,) = POD["spec"]["containers"]


def server_args() -> argparse.Namespace:
    """The container's args parsed by edge-server's parser; an unknown or renamed option fails here."""
    parser = build_parser()
    parser.exit_on_error = False
    try:
        return parser.parse_args(CONTAINER["args"])
    except (argparse.ArgumentError, SystemExit) as e:
        pytest.fail(f"deployment.yaml args are not edge-server's options: {CONTAINER['args']} ({e})")


@pytest.mark.parametrize("name", MANIFESTS)
def test_manifest_valid(name):
    for doc in documents(name):
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {e.message} at {list(e.path)}")


def test_kustomization_lists_every_manifest():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == sorted(set(MANIFESTS) - ONE_OFF)
    assert RESOURCES["Namespace", kustomization["namespace"]]


def test_container_runs_the_server_on_gpu():
    args = server_args()
    assert "command" not in CONTAINER  # the image's entrypoint, edge-server
    assert (args.host, args.device) == ("0.0.0.0", "cuda")
    assert CONTAINER["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert CONTAINER["resources"]["requests"]["cpu"]  # the HPA's utilization is relative to it
    assert POD["spec"]["terminationGracePeriodSeconds"] > args.grace_s
    dockerfile = (K8S.parents[1] / "Dockerfile").read_text()
    assert f"--uid {POD['spec']['securityContext']['runAsUser']} " in dockerfile


def test_checkpoint_comes_from_the_models_volume():
    args = server_args()
    (mount,) = CONTAINER["volumeMounts"]
    assert Path(args.ckpt).parent == Path(mount["mountPath"]) and mount["readOnly"]
    (volume,) = [v for v in POD["spec"]["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert RESOURCES["PersistentVolumeClaim", claim]
    loader = RESOURCES["Pod", "models-loader"]["spec"]
    assert loader["volumes"][0]["persistentVolumeClaim"]["claimName"] == claim
    assert loader["containers"][0]["volumeMounts"][0]["mountPath"] == mount["mountPath"]


def test_ports_probes_and_metrics_annotations_match_the_cli():
    args = server_args()
    ports = {p["name"]: p["containerPort"] for p in CONTAINER["ports"]}
    assert ports == {"grpc": args.port, "metrics": args.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert CONTAINER[probe]["grpc"] == {"port": args.port}, probe  # service "" of the health service
    annotations = POD["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(args.metrics_port)
    assert annotations["prometheus.io/path"] == "/metrics"


def test_headless_service_and_autoscaler_select_the_deployment():
    args = server_args()
    labels = POD["metadata"]["labels"]
    service = RESOURCES["Service", "edge"]["spec"]
    assert service["clusterIP"] == "None"  # DNS lists every pod: clients balance with round_robin
    assert service["selector"].items() <= labels.items()
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    # A headless Service does not map ports: clients dial the pods' own, so the numbers must be the same.
    ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["ports"]}
    assert ports == {"grpc": (args.port, "grpc"), "metrics": (args.metrics_port, "metrics")}
    target = RESOURCES["HorizontalPodAutoscaler", "edge"]["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": DEPLOYMENT["metadata"]["name"]}
    assert "replicas" not in DEPLOYMENT["spec"]  # the autoscaler owns it


def test_termination_leaves_time_to_drain():
    """preStop (the endpoint leaves DNS) plus --grace-s (frames in progress finish) fit in the grace period."""
    args = server_args()
    command = CONTAINER["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    assert pre_stop_s + args.grace_s < POD["spec"]["terminationGracePeriodSeconds"]
