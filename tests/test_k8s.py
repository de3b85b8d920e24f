"""The serving manifests under k8s/: every kustomization renders, every object passes the Kubernetes
schemas offline, and the pieces agree with common/features.py and with each other.

The TF Serving text protos in the ConfigMaps are parsed with their real message types, so a misspelt
field fails here instead of in a crash-looping pod.
"""
import functools
import importlib.metadata
import pathlib
import re
import shutil
import subprocess

import kubernetes_validate
import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, text_format, wrappers_pb2
from kubernetes.utils.quantity import parse_quantity
from tensorflow_serving.config import model_server_config_pb2

from common.features import GRPC_PORT, MODEL_NAME, REST_PORT, SERVING_SIGNATURE

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
K8S_DIR = REPO_ROOT / "k8s"

# Kustomization directories under k8s/, by short name.
TF_SERVING_OVERLAYS = ("cpu", "gpu", "gcs")
PVC_OVERLAYS = ("cpu", "gpu")
RENDERED = {name: f"overlays/{name}" for name in TF_SERVING_OVERLAYS} | {"kserve": "kserve"}

# The oldest Kubernetes the manifests promise to work on (the native preStop sleep action is 1.30)
# and the newest the installed schemas know.
K8S_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())

SERVER_CONTAINER = "tensorflow-serving"
SERVER_IMAGE = "tensorflow/serving"
MODEL_STATUS_PATH = f"/v1/models/{MODEL_NAME}"
KSERVE_API_VERSION = "serving.kserve.io/v1beta1"


# --------------------------------------------------------------------------------------- rendering
@functools.cache
def kubectl() -> str:
    path = shutil.which("kubectl")
    if path is None:
        pytest.fail("kubectl is not on PATH: it is needed to render k8s/ with `kubectl kustomize`")
    return path


@functools.cache
def _render(name: str) -> tuple:
    directory = K8S_DIR / RENDERED[name]
    done = subprocess.run(
        [kubectl(), "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    if done.returncode != 0:
        pytest.fail(f"`kubectl kustomize {directory}` failed:\n{done.stderr}")
    objects = tuple(o for o in yaml.safe_load_all(done.stdout) if o is not None)
    assert objects, f"{directory} renders no objects"
    return objects


def render(name: str) -> list:
    return list(_render(name))


def of_kind(objects, kind: str) -> list:
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind: str) -> dict:
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected exactly one {kind}, found {[o['metadata']['name'] for o in found]}"
    return found[0]


def named(objects, kind: str, name: str) -> dict:
    found = [o for o in of_kind(objects, kind) if o["metadata"]["name"] == name]
    assert found, f"{kind} {name!r} is referenced but not rendered"
    return found[0]


def pod_spec(deployment: dict) -> dict:
    return deployment["spec"]["template"]["spec"]


def server_container(deployment: dict) -> dict:
    containers = {c["name"]: c for c in pod_spec(deployment)["containers"]}
    assert SERVER_CONTAINER in containers, f"no {SERVER_CONTAINER} container in {sorted(containers)}"
    return containers[SERVER_CONTAINER]


def server_flags(container: dict) -> dict:
    """--flag=value arguments of tensorflow_model_server, as a dict; duplicates are an error."""
    command = container.get("command") or []
    assert command and command[0].endswith("/tensorflow_model_server"), (
        f"run the model server binary directly, not {command or 'the image entrypoint'}"
    )
    flags = {}
    for arg in command[1:] + container.get("args", []):
        match = re.fullmatch(r"--([a-z_]+)=(.*)", arg)
        assert match, f"argument {arg!r} is not of the form --flag=value"
        assert match[1] not in flags, f"--{match[1]} given twice"
        flags[match[1]] = match[2]
    return flags


def container_port(container: dict, port) -> int:
    """A probe's or Service's target port (number or port name) as a container port number."""
    if isinstance(port, int):
        return port
    by_name = {p["name"]: p["containerPort"] for p in container.get("ports", []) if "name" in p}
    assert port in by_name, f"port name {port!r} is not a port of container {container['name']}"
    return by_name[port]


def mounted_file(objects, deployment: dict, container: dict, path: str) -> tuple:
    """(text, mount, volume) of a file the container reads from a mounted ConfigMap."""
    volumes = {v["name"]: v for v in pod_spec(deployment).get("volumes", [])}
    mounts = [
        m for m in container.get("volumeMounts", []) if path.startswith(m["mountPath"].rstrip("/") + "/")
    ]
    assert mounts, f"{path} lies under no volume mount of {container['name']}"
    mount = max(mounts, key=lambda m: len(m["mountPath"]))
    volume = volumes[mount["name"]]
    assert "configMap" in volume, f"{path} is on volume {volume['name']}, which is not a ConfigMap"
    relative = path[len(mount["mountPath"].rstrip("/")) + 1 :]
    if "subPath" in mount:
        relative = f"{mount['subPath']}/{relative}"
    items = {i["path"]: i["key"] for i in volume["configMap"].get("items", [])}
    key = items.get(relative, relative) if items else relative
    config_map = named(objects, "ConfigMap", volume["configMap"]["name"])
    assert key in config_map.get("data", {}), (
        f"{path} needs key {key!r} in ConfigMap {config_map['metadata']['name']}, "
        f"which holds {sorted(config_map.get('data', {}))}"
    )
    return config_map["data"][key], mount, volume


# ------------------------------------------------------------------------------------ TF protos
@functools.cache
def _transcribed_protos() -> descriptor_pool.DescriptorPool:
    """BatchingParameters and MonitoringConfig, transcribed field for field from tensorflow/serving's
    servables/tensorflow/session_bundle_config.proto and config/monitoring_config.proto: the
    tensorflow-serving-api wheel ships neither."""
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    field = descriptor_pb2.FieldDescriptorProto

    def add(message, name, number, type_, type_name=None, repeated=False):
        f = message.field.add(name=name, number=number, type=type_)
        f.label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
        if type_name:
            f.type_name = type_name

    batching = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    params = batching.message_type.add(name="BatchingParameters")
    for number, name in enumerate(
        ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"), start=1
    ):
        add(params, name, number, field.TYPE_MESSAGE, ".google.protobuf.Int64Value")
    add(params, "thread_pool_name", 5, field.TYPE_MESSAGE, ".google.protobuf.StringValue")
    add(params, "allowed_batch_sizes", 6, field.TYPE_INT64, repeated=True)
    add(params, "pad_variable_length_inputs", 7, field.TYPE_BOOL)
    pool.Add(batching)

    monitoring = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    prometheus = monitoring.message_type.add(name="PrometheusConfig")
    add(prometheus, "enable", 1, field.TYPE_BOOL)
    add(prometheus, "path", 2, field.TYPE_STRING)
    add(monitoring.message_type.add(name="MonitoringConfig"), "prometheus_config", 1, field.TYPE_MESSAGE,
        ".tensorflow.serving.PrometheusConfig")
    pool.Add(monitoring)
    return pool


@functools.cache
def batching_parameters_class():
    try:  # the real generated module, should a future wheel ship it
        from tensorflow_serving.servables.tensorflow import session_bundle_config_pb2
    except ImportError:
        pool = _transcribed_protos()
        return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.BatchingParameters"))
    return session_bundle_config_pb2.BatchingParameters


@functools.cache
def monitoring_config_class():
    try:
        from tensorflow_serving.config import monitoring_config_pb2
    except ImportError:
        pool = _transcribed_protos()
        return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.serving.MonitoringConfig"))
    return monitoring_config_pb2.MonitoringConfig


def parse_text_proto(text: str, message_class, what: str):
    try:
        return text_format.Parse(text, message_class())
    except text_format.ParseError as error:
        problem = f"{what} is not a valid {message_class.DESCRIPTOR.full_name} text proto: {error}"
    pytest.fail(problem)  # outside the except: the chained traceback would bury the message


def schema_problem(obj: dict, k8s_version: str):
    """Why obj fails the strict Kubernetes schema of that version, or None. A message, not the
    exception: jsonschema's dumps the whole schema."""
    try:
        kubernetes_validate.validate(obj, k8s_version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"fails the Kubernetes {k8s_version} schema at {list(error.absolute_path)}: {error.message}"
    except kubernetes_validate.SchemaNotFoundError as error:
        return error.message
    return None


# ------------------------------------------------------------------------------------ rendering
def test_every_kustomization_under_k8s_is_rendered_here():
    kustomizations = {p.parent.relative_to(K8S_DIR).as_posix() for p in K8S_DIR.rglob("kustomization.yaml")}
    entry_points = {d for d in kustomizations if d.startswith("overlays/") or d == "kserve"}
    assert entry_points == set(RENDERED.values()), "an overlay was added or removed without its tests"
    assert "base" in kustomizations and "model-store" in kustomizations


@pytest.mark.parametrize("name", sorted(RENDERED))
@pytest.mark.parametrize("k8s_version", K8S_VERSIONS)
def test_objects_pass_the_kubernetes_schemas(name, k8s_version):
    problems = []
    for obj in render(name):
        where = f"{name}: {obj.get('kind')} {obj.get('metadata', {}).get('name')}"
        if obj.get("apiVersion", "").startswith("serving.kserve.io/"):
            continue  # a CRD: no built-in schema, checked field by field in the kserve tests below
        problem = schema_problem(obj, k8s_version)
        if problem:
            problems.append(f"{where}: {problem}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", sorted(RENDERED))
def test_references_resolve(name):
    objects = render(name)
    for deployment in of_kind(objects, "Deployment"):
        spec = pod_spec(deployment)
        if "serviceAccountName" in spec:
            named(objects, "ServiceAccount", spec["serviceAccountName"])
        for volume in spec.get("volumes", []):
            if "configMap" in volume:
                named(objects, "ConfigMap", volume["configMap"]["name"])
            if "persistentVolumeClaim" in volume:
                named(objects, "PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"])
        volume_names = {v["name"] for v in spec.get("volumes", [])}
        for container in spec["containers"] + spec.get("initContainers", []):
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volume_names, f"{container['name']} mounts undeclared {mount['name']}"


# --------------------------------------------------------------------------- TF Serving overlays
@pytest.mark.parametrize("name", TF_SERVING_OVERLAYS)
def test_ports_agree_with_features_and_service(name):
    objects = render(name)
    deployment = one(objects, "Deployment")
    container = server_container(deployment)
    flags = server_flags(container)
    assert int(flags["port"]) == GRPC_PORT
    assert int(flags["rest_api_port"]) == REST_PORT
    assert "model_name" not in flags and "model_base_path" not in flags, (
        "--model_config_file makes --model_name/--model_base_path dead flags that only mislead"
    )
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"grpc": GRPC_PORT, "http": REST_PORT}

    service = one(objects, "Service")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items(), "the Service selects no server pod"
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"grpc", "http"}
    for port_name, number in (("grpc", GRPC_PORT), ("http", REST_PORT)):
        assert ports[port_name]["port"] == number
        assert container_port(container, ports[port_name].get("targetPort", number)) == number


@pytest.mark.parametrize("name", TF_SERVING_OVERLAYS)
def test_probes_ask_the_model_status_route_on_the_rest_port(name):
    container = server_container(one(render(name), "Deployment"))
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe in container, f"no {probe}"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        if probe not in container:
            continue
        http_get = container[probe].get("httpGet")
        assert http_get, f"{probe} is not an HTTP GET"
        assert http_get["path"] == MODEL_STATUS_PATH, f"{probe} asks {http_get['path']}"
        assert container_port(container, http_get["port"]) == REST_PORT, f"{probe} is not on the REST port"


@pytest.mark.parametrize("name", TF_SERVING_OVERLAYS)
def test_model_config_serves_the_model_from_the_store(name):
    objects = render(name)
    deployment = one(objects, "Deployment")
    container = server_container(deployment)
    flags = server_flags(container)
    assert int(flags["model_config_file_poll_wait_seconds"]) > 0, "the model config would never be re-read"
    assert int(flags["file_system_poll_wait_seconds"]) > 0, "new versions would never be picked up"
    text, config_mount, _ = mounted_file(objects, deployment, container, flags["model_config_file"])
    assert "subPath" not in config_mount, "a subPath mount never sees ConfigMap updates, defeating the polling"

    config = parse_text_proto(text, model_server_config_pb2.ModelServerConfig, "the model config")
    assert config.WhichOneof("config") == "model_config_list"
    models = list(config.model_config_list.config)
    assert [m.name for m in models] == [MODEL_NAME]
    model = models[0]
    assert model.model_platform == "tensorflow"
    assert model.model_version_policy.WhichOneof("policy_choice") == "latest", "serve the latest pushed version"
    assert model.model_version_policy.latest.num_versions >= 1
    assert model.base_path.endswith(f"/{MODEL_NAME}"), "base_path must be SERVING_BASE/<MODEL_NAME>, no version"

    spec = pod_spec(deployment)
    claim_volumes = {v["name"]: v for v in spec.get("volumes", []) if "persistentVolumeClaim" in v}
    if name in PVC_OVERLAYS:
        store_mounts = [m for m in container["volumeMounts"] if m["name"] in claim_volumes]
        assert len(store_mounts) == 1, "expected one model-store mount"
        store_mount = store_mounts[0]
        assert pathlib.PurePosixPath(model.base_path).is_relative_to(store_mount["mountPath"]), (
            f"base_path {model.base_path} is not under the model store mount {store_mount['mountPath']}"
        )
        assert store_mount.get("readOnly") is True
        volume = claim_volumes[store_mount["name"]]["persistentVolumeClaim"]
        assert volume.get("readOnly") is True
        claim = named(objects, "PersistentVolumeClaim", volume["claimName"])
        assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
    else:
        assert model.base_path.startswith("gs://"), "the gcs overlay reads the bucket"
        assert not claim_volumes and not of_kind(objects, "PersistentVolumeClaim"), "gcs needs no claim"
        account = named(objects, "ServiceAccount", spec["serviceAccountName"])
        assert account["metadata"]["annotations"]["iam.gke.io/gcp-service-account"].endswith(
            ".iam.gserviceaccount.com"
        ), "reading gs:// needs a Workload Identity binding"


@pytest.mark.parametrize("name", TF_SERVING_OVERLAYS)
def test_batching_parameters_are_mounted_and_valid(name):
    objects = render(name)
    deployment = one(objects, "Deployment")
    container = server_container(deployment)
    flags = server_flags(container)
    assert flags.get("enable_batching") == "true"
    assert "batching_parameters_file" in flags, "batching on, with the server's default parameters"
    text, _, _ = mounted_file(objects, deployment, container, flags["batching_parameters_file"])
    params = parse_text_proto(text, batching_parameters_class(), "the batching parameters")
    for field in ("max_batch_size", "batch_timeout_micros", "max_enqueued_batches", "num_batch_threads"):
        assert params.HasField(field), f"{field} left to the server's default"
    assert params.max_batch_size.value >= 1 and params.num_batch_threads.value >= 1
    assert params.max_enqueued_batches.value >= 1 and params.batch_timeout_micros.value >= 0
    sizes = list(params.allowed_batch_sizes)
    if sizes:
        assert sizes == sorted(set(sizes)) and sizes[-1] == params.max_batch_size.value


@pytest.mark.parametrize("name", TF_SERVING_OVERLAYS)
def test_prometheus_metrics_are_exposed_where_the_pod_says(name):
    objects = render(name)
    deployment = one(objects, "Deployment")
    container = server_container(deployment)
    text, _, _ = mounted_file(objects, deployment, container, server_flags(container)["monitoring_config_file"])
    monitoring = parse_text_proto(text, monitoring_config_class(), "the monitoring config")
    assert monitoring.prometheus_config.enable
    annotations = deployment["spec"]["template"]["metadata"].get("annotations", {})
    assert annotations.get("prometheus.io/path") == monitoring.prometheus_config.path
    assert int(annotations.get("prometheus.io/port", 0)) == REST_PORT, "TF Serving serves metrics on the REST port"


@pytest.mark.parametrize("name", TF_SERVING_OVERLAYS)
def test_every_container_has_requests_and_limits(name):
    for deployment in of_kind(render(name), "Deployment"):
        spec = pod_spec(deployment)
        for container in spec["containers"] + spec.get("initContainers", []):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(kind, {}), f"{container['name']}: no {kind}.{resource}"
            for resource, request in resources["requests"].items():
                limit = resources["limits"].get(resource)
                assert limit is None or parse_quantity(request) <= parse_quantity(limit), (
                    f"{container['name']}: {resource} request {request} above its limit {limit}"
                )


@pytest.mark.parametrize("name", TF_SERVING_OVERLAYS)
def test_runs_non_root_on_a_read_only_root(name):
    deployment = one(render(name), "Deployment")
    spec = pod_spec(deployment)
    pod_security = spec.get("securityContext", {})
    assert pod_security.get("runAsNonRoot") is True
    assert pod_security.get("runAsUser", 0) != 0
    for container in spec["containers"]:
        security = container.get("securityContext", {})
        assert security.get("readOnlyRootFilesystem") is True
        assert security.get("allowPrivilegeEscalation") is False
        assert "ALL" in security.get("capabilities", {}).get("drop", [])
    volumes = {v["name"]: v for v in spec["volumes"]}
    tmp = [m for m in server_container(deployment)["volumeMounts"] if m["mountPath"] == "/tmp"]
    assert tmp and "emptyDir" in volumes[tmp[0]["name"]], "TensorFlow needs a writable /tmp on a read-only root"


@pytest.mark.parametrize("name", TF_SERVING_OVERLAYS)
def test_image_is_the_serving_release_of_the_client_pin(name):
    image = server_container(one(render(name), "Deployment"))["image"]
    repository, _, tag = image.partition(":")
    assert repository == SERVER_IMAGE
    match = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)(-gpu)?", tag)
    assert match, f"{image} is not pinned to a release tag"
    client = importlib.metadata.version("tensorflow-serving-api").split(".")
    assert [match[1], match[2]] == client[:2], f"{image} is not on the tensorflow-serving-api {client} line"
    assert bool(match[4]) == (name == "gpu"), "only the gpu overlay runs the -gpu image"


@pytest.mark.parametrize("name", TF_SERVING_OVERLAYS)
def test_only_the_gpu_overlay_asks_for_a_gpu(name):
    deployment = one(render(name), "Deployment")
    spec = pod_spec(deployment)
    limits = server_container(deployment)["resources"]["limits"]
    selector = spec.get("nodeSelector", {})
    gpu_tolerations = [
        t for t in spec.get("tolerations", [])
        if t.get("key") == "nvidia.com/gpu" and t.get("effect") == "NoSchedule"
        and t.get("operator", "Equal") in ("Exists", "Equal")
    ]
    if name == "gpu":
        assert int(limits.get("nvidia.com/gpu", 0)) >= 1
        assert selector.get("cloud.google.com/gke-accelerator") == "nvidia-tesla-t4"
        assert gpu_tolerations, "GKE taints GPU nodes with nvidia.com/gpu:NoSchedule"
    else:
        for container in spec["containers"]:
            for kind in ("requests", "limits"):
                assert "nvidia.com/gpu" not in container.get("resources", {}).get(kind, {})
        assert "cloud.google.com/gke-accelerator" not in selector
        assert not gpu_tolerations


@pytest.mark.parametrize("name", TF_SERVING_OVERLAYS)
def test_autoscaler_and_disruption_budget_cover_the_deployment(name):
    objects = render(name)
    deployment = one(objects, "Deployment")
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count; apply would reset it"
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]

    hpa = one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert any(
        m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in hpa["spec"]["metrics"]
    ), "the HPA scales on CPU"
    assert 2 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]

    pdb = one(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items(), "the PDB covers no server pod"
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


# --------------------------------------------------------------------------------------- KServe
PREDICTOR_EXTENSION_FIELDS = {"storageUri", "runtimeVersion", "protocolVersion"}


def inference_service(objects) -> dict:
    service = one(objects, "InferenceService")
    assert service["apiVersion"] == KSERVE_API_VERSION
    return service


def test_kserve_inference_service_serves_the_model_from_the_store():
    objects = render("kserve")
    service = inference_service(objects)
    # KServe's TF Serving runtime names the model after the InferenceService.
    assert service["metadata"]["name"] == MODEL_NAME
    predictor = service["spec"]["predictor"]
    frameworks = set(predictor) - {
        "minReplicas", "maxReplicas", "serviceAccountName", "nodeSelector", "tolerations",
        "scaleMetric", "scaleTarget", "canaryTrafficPercent", "containerConcurrency", "timeout",
    }
    assert frameworks == {"tensorflow"}, f"unexpected predictor fields {sorted(frameworks)}"
    assert 1 <= predictor.get("minReplicas", 1) <= predictor.get("maxReplicas", 1)
    tensorflow = predictor["tensorflow"]

    uri = tensorflow["storageUri"]
    assert uri.endswith(f"/{MODEL_NAME}"), "storageUri must be SERVING_BASE/<MODEL_NAME>, without a version"
    match = re.fullmatch(r"pvc://([a-z0-9-]+)/(.+)", uri)
    if match:
        claim = named(objects, "PersistentVolumeClaim", match[1])
        assert claim["spec"]["accessModes"] == ["ReadOnlyMany"]
        pvc_base = set(
            v["persistentVolumeClaim"]["claimName"]
            for v in pod_spec(one(render("cpu"), "Deployment"))["volumes"] if "persistentVolumeClaim" in v
        )
        assert pvc_base == {match[1]}, "KServe and the TF Serving Deployment read different stores"
    else:
        assert uri.startswith("gs://"), f"storageUri {uri} is neither pvc:// nor gs://"

    runtime_version = str(tensorflow["runtimeVersion"])
    base_tag = server_container(one(render("cpu"), "Deployment"))["image"].partition(":")[2]
    assert runtime_version == base_tag, "KServe and the Deployment run different TF Serving releases"
    assert tensorflow.get("protocolVersion", "v1") == "v1", "the TF Serving runtime speaks the v1 protocol"


def test_kserve_predictor_container_fields_pass_the_container_schema():
    """The tensorflow predictor spec is a core/v1 Container plus storageUri/runtimeVersion/protocolVersion:
    validate the Container part strictly as a Pod's container, so a misspelt field fails here too."""
    tensorflow = inference_service(render("kserve"))["spec"]["predictor"]["tensorflow"]
    container = {k: v for k, v in tensorflow.items() if k not in PREDICTOR_EXTENSION_FIELDS}
    resources = container.get("resources", {})
    for kind in ("requests", "limits"):
        for resource in ("cpu", "memory"):
            assert resource in resources.get(kind, {}), f"KServe predictor: no {kind}.{resource}"
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kserve-predictor-check"},
        "spec": {"containers": [{"name": "kserve-container", **container}]},
    }
    for k8s_version in K8S_VERSIONS:
        problem = schema_problem(pod, k8s_version)
        assert problem is None, f"predictor.tensorflow as a Container: {problem}"


# ------------------------------------------------------------------------------ the checks bite
def test_the_text_proto_parsers_reject_typos():
    """The parsers above are only worth something if they are strict."""
    good = 'model_config_list { config { name: "x" base_path: "/m/x" model_platform: "tensorflow" } }'
    text_format.Parse(good, model_server_config_pb2.ModelServerConfig())
    with pytest.raises(text_format.ParseError):
        text_format.Parse(good.replace("base_path", "basepath"), model_server_config_pb2.ModelServerConfig())
    text_format.Parse("max_batch_size { value: 8 } allowed_batch_sizes: 8", batching_parameters_class()())
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_sise { value: 8 }", batching_parameters_class()())
    with pytest.raises(text_format.ParseError):
        text_format.Parse("max_batch_size: 8", batching_parameters_class()())  # a wrapper, not a scalar
    text_format.Parse('prometheus_config { enable: true path: "/m" }', monitoring_config_class()())
    with pytest.raises(text_format.ParseError):
        text_format.Parse("prometheus_config { enabled: true }", monitoring_config_class()())


def test_the_schema_validation_is_strict():
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "dataa": {}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, K8S_VERSIONS[-1], strict=True)


def test_readme_documents_the_same_routes():
    readme = (K8S_DIR / "README.md").read_text()
    assert "kubectl apply -k k8s/overlays/cpu" in readme
    assert f"localhost:{REST_PORT}{MODEL_STATUS_PATH}" in readme
    assert SERVING_SIGNATURE in readme
