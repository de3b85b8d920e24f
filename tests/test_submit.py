"""`submit` against a fake of the Kubeflow Pipelines API server's v2beta1 HTTP routes on 127.0.0.1."""
import email
import http.server
import json
import socket
import threading
import urllib.parse

import pytest
import yaml

from pipeline.__main__ import main

API = "/apis/v2beta1"


class FakePipelinesAPI(http.server.ThreadingHTTPServer):
    """The routes kfp.Client uses to upload a pipeline version and run it: healthz, experiments,
    pipelines (list, upload, upload_version, versions), runs (create, get). A run's GETs walk through
    `run_states`. An uploaded file that is not a pipeline spec is refused, as the real server does."""

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[tuple[str, str, dict]] = []  # (method, path, headers by lower-case name)
        self.experiments: list[dict] = []
        self.pipelines: list[dict] = []
        self.versions: list[dict] = []
        self.uploaded: list[str] = []
        self.runs: dict[str, dict] = {}
        self.run_states: list[tuple[str, dict[str, str]]] = [("PENDING", {})]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def _add_version(self, pipeline_id: str, name: str, spec: str) -> dict:
        version = {"pipeline_id": pipeline_id, "pipeline_version_id": f"v{len(self.versions) + 1}", "display_name": name}
        self.versions.append(version)
        self.uploaded.append(spec)
        return version

    def handle(self, method: str, path: str, query: dict, body: bytes, content_type: str):
        if method == "GET" and path == f"{API}/healthz":
            return 200, {"multi_user": False}
        if path == f"{API}/experiments":
            if method == "GET":
                name = json.loads(query["filter"])["predicates"][0]["stringValue"]
                return 200, {"experiments": [e for e in self.experiments if e["display_name"] == name]}
            experiment = {**json.loads(body), "experiment_id": f"e{len(self.experiments) + 1}"}
            self.experiments.append(experiment)
            return 200, experiment
        if method == "GET" and path == f"{API}/pipelines":
            name = json.loads(query["filter"])["predicates"][0]["stringValue"]
            return 200, {"pipelines": [p for p in self.pipelines if p["display_name"] == name]}
        if method == "POST" and path in (f"{API}/pipelines/upload", f"{API}/pipelines/upload_version"):
            spec = _uploaded_file(body, content_type)
            try:
                document = next(yaml.safe_load_all(spec))
                valid = isinstance(document, dict) and {"pipelineInfo", "root", "deploymentSpec"} <= set(document)
            except yaml.YAMLError:
                valid = False
            if not valid:
                message = "Failed to create a pipeline due to error converting YAML to a pipeline spec: invalid spec"
                return 400, {"error": message, "code": 3, "message": message, "details": []}
            if path.endswith("/upload"):
                pipeline = {"pipeline_id": f"p{len(self.pipelines) + 1}", "display_name": query["name"]}
                self.pipelines.append(pipeline)
                self._add_version(pipeline["pipeline_id"], query["name"], spec)
                return 200, pipeline
            return 200, self._add_version(query["pipelineid"], query["name"], spec)
        if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pipeline_id = path.split("/")[-2]
            versions = [v for v in self.versions if v["pipeline_id"] == pipeline_id]
            return 200, {"pipeline_versions": versions[::-1], "total_size": len(versions)}
        if method == "POST" and path == f"{API}/runs":
            run = {**json.loads(body), "run_id": f"r{len(self.runs) + 1}", "state": "PENDING"}
            self.runs[run["run_id"]] = run
            return 200, run
        if method == "GET" and path.startswith(f"{API}/runs/"):
            run = self.runs[path.rsplit("/", 1)[1]]
            state, tasks = self.run_states.pop(0) if len(self.run_states) > 1 else self.run_states[0]
            details = [{"task_id": f"t-{name}", "display_name": name, "state": s} for name, s in tasks.items()]
            error = {"message": "train: the pod was OOMKilled"} if state == "FAILED" else None
            return 200, {**run, "state": state, "run_details": {"task_details": details}, "error": error}
        return 404, {"error": f"no route {method} {path}", "code": 5, "message": f"no route {method} {path}"}


def _uploaded_file(body: bytes, content_type: str) -> str:
    message = email.message_from_bytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    (part,) = [p for p in message.get_payload() if p.get_param("name", header="content-disposition") == "uploadfile"]
    return part.get_payload(decode=True).decode()


class _Handler(http.server.BaseHTTPRequestHandler):
    def _serve(self):
        url = urllib.parse.urlsplit(self.path)
        query = {k: v[0] for k, v in urllib.parse.parse_qs(url.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append((self.command, url.path, {k.lower(): v for k, v in self.headers.items()}))
        status, payload = self.server.handle(self.command, url.path, query, body, self.headers.get("Content-Type", ""))
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve

    def log_message(self, *args):
        pass


@pytest.fixture
def api():
    server = FakePipelinesAPI()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> str:
    """The shipped config compiled once, with the parameters a run needs."""
    path = tmp_path_factory.mktemp("package") / "hanet_pipeline.yaml"
    flags = ["--param", "catalog=gs://shop/catalog.jsonl", "--param", "serving_base=gs://shop/serving"]
    assert main(["compile", "--output", str(path), "--image-tag", "abc123", *flags]) == 0
    return str(path)


@pytest.fixture(autouse=True)
def no_auth_environment(monkeypatch):
    for name in ("KF_PIPELINES_ENDPOINT", "KF_PIPELINES_UI_ENDPOINT", "KF_PIPELINES_TOKEN", "KF_PIPELINES_COOKIES",
                 "KF_PIPELINES_SA_TOKEN_PATH", "KF_PIPELINES_IAP_OAUTH2_CLIENT_ID"):
        monkeypatch.delenv(name, raising=False)


def test_submit_compiles_uploads_a_version_and_starts_a_run_with_auth_from_the_environment(api, monkeypatch, capsys):
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "token-123")
    monkeypatch.setenv("KF_PIPELINES_COOKIES", "authservice_session=s3cr3t")
    args = ["submit", "--host", api.url, "--experiment", "nightly", "--run-name", "hanet-nightly-1",
            "--image-tag", "f00d", "--param", "catalog=gs://shop/catalog.jsonl", "--param", "epochs=3",
            "--set", "params.serving_base=gs://shop/serving", "--pipeline-root", "gs://shop/pipeline_root"]
    assert main(args) == 0
    out = capsys.readouterr().out
    (run,) = api.runs.values()
    assert f"run hanet-nightly-1: {api.url}/#/runs/details/{run['run_id']}" in out
    assert f"{api.url}/#/pipelines/details/p1/version/v1" in out
    # The run: in the experiment, of the uploaded version, with the --param values as typed arguments.
    assert run["display_name"] == "hanet-nightly-1" and run["experiment_id"] == "e1"
    assert api.experiments[0]["display_name"] == "nightly"
    assert run["pipeline_version_reference"] == {"pipeline_id": "p1", "pipeline_version_id": "v1"}
    assert run["runtime_config"]["parameters"] == {"catalog": "gs://shop/catalog.jsonl", "epochs": 3}
    assert run["runtime_config"]["pipeline_root"] == "gs://shop/pipeline_root"
    # The uploaded spec is this deployment's: images of the tag, the config's serving base as a default.
    spec = next(yaml.safe_load_all(api.uploaded[0]))
    images = {e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()}
    assert images == {"hanet-components:f00d", "hanet-trainer:f00d"}
    assert spec["root"]["inputDefinitions"]["parameters"]["serving_base"]["defaultValue"] == "gs://shop/serving"
    assert spec["defaultPipelineRoot"] == "gs://shop/pipeline_root"
    for method, path, headers in api.requests:
        assert headers.get("cookie") == "authservice_session=s3cr3t", path
        if path != f"{API}/healthz":  # kfp's client sends no token to the unauthenticated health check
            assert headers.get("authorization") == "Bearer token-123", path


def test_a_second_submit_adds_a_version_to_the_same_pipeline(api, package, capsys):
    for name in ("first", "second"):
        assert main(["submit", "--host", api.url, "--package", package, "--run-name", name]) == 0
    assert [p["display_name"] for p in api.pipelines] == ["hanet-product-classifier"]
    assert [(v["pipeline_id"], v["display_name"]) for v in api.versions] == [
        ("p1", "hanet-product-classifier"), ("p1", "second")
    ]
    assert [r["pipeline_version_reference"]["pipeline_version_id"] for r in api.runs.values()] == ["v1", "v2"]
    assert [e["display_name"] for e in api.experiments] == ["hanet"]  # found, not created again


def test_wait_follows_the_run_and_its_tasks_to_success(api, package, capsys):
    api.run_states = [
        ("RUNNING", {"preprocess": "RUNNING"}),
        ("RUNNING", {"preprocess": "SUCCEEDED", "train": "RUNNING", "train-driver": "SUCCEEDED"}),
        ("SUCCEEDED", {"preprocess": "SUCCEEDED", "train": "SUCCEEDED", "evaluate": "SUCCEEDED", "push": "SUCCEEDED"}),
    ]
    assert main(["submit", "--host", api.url, "--package", package, "--wait", "--poll-seconds", "0.01"]) == 0
    lines = capsys.readouterr().out.splitlines()
    followed = lines[lines.index("  preprocess: RUNNING"):]
    assert followed == [
        "  preprocess: RUNNING", "run: RUNNING",
        "  preprocess: SUCCEEDED", "  train: RUNNING",
        "  train: SUCCEEDED", "  evaluate: SUCCEEDED", "  push: SUCCEEDED", "run: SUCCEEDED",
    ]


def test_wait_fails_in_one_line_when_the_run_fails(api, package, capsys):
    api.run_states = [("RUNNING", {"train": "RUNNING"}), ("FAILED", {"train": "FAILED"})]
    assert main(["submit", "--host", api.url, "--package", package, "--run-name", "r", "--wait",
                 "--poll-seconds", "0.01"]) == 1
    captured = capsys.readouterr()
    assert "run error: train: the pod was OOMKilled" in captured.out
    assert captured.err == f"error: run r ended FAILED: see {api.url}/#/runs/details/r1\n"


def test_an_unreachable_host_is_one_line(package, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["submit", "--host", f"http://127.0.0.1:{port}", "--package", package]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: cannot reach the Kubeflow Pipelines API at http://127.0.0.1:{port}")
    assert "Connection refused" in err


def test_a_rejected_package_is_one_line_with_the_servers_reason(api, tmp_path, capsys):
    bad = tmp_path / "not_a_pipeline.yaml"
    bad.write_text("just: [a, list]\n")
    assert main(["submit", "--host", api.url, "--package", str(bad)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert f"the Kubeflow Pipelines API at {api.url} refused uploading the package {bad}: HTTP 400" in err
    assert "error converting YAML to a pipeline spec" in err
    assert not api.runs


def test_a_run_without_a_catalog_is_refused_before_contacting_the_cluster(api, capsys):
    assert main(["submit", "--host", api.url, "--param", "serving_base=gs://shop/serving"]) == 1
    assert "the run has no catalog: pass --param catalog=" in capsys.readouterr().err
    assert not api.requests


def test_settings_compiled_into_the_spec_are_refused_with_a_package(api, package, capsys):
    assert main(["submit", "--host", api.url, "--package", package, "--set", "tasks.train.accelerator_count=2"]) == 1
    assert "--set tasks.train.accelerator_count=2 changes the compiled spec" in capsys.readouterr().err
    assert not api.requests
