#!/usr/bin/env python3
"""Checks docker-compose.yml, the Dockerfile, the collector configuration and the
Kubernetes manifests without a Docker engine or a cluster: they parse, and everything
they reference exists.

- compose: the five services (postgres, tokenvisor, tokenvisor-2, otel-collector,
  jaeger); every published port bound to 127.0.0.1; a health check on every service; `depends_on`
  naming defined services with a valid condition, and no dependency cycle; build
  contexts and Dockerfiles that exist; bind-mounted files that exist; named volumes
  declared; every tokenvisor replica exporting OTLP/HTTP to the collector service; the
  replicas sharing one database, encryption key and admin token, each with its own data
  volume and a TOKENVISOR_ADVERTISE_URL naming its own service on port 7070.
- Dockerfile: several stages, `COPY --from` naming an earlier stage, COPY sources that
  exist in the context, a non-root USER and a HEALTHCHECK in the final stage.
- collector: every pipeline's receivers, processors and exporters are defined, and its
  extensions too; the OTLP/HTTP receiver listens on 4318.
- deploy/kubernetes: every file in kustomization.yaml exists and parses
  (yaml.safe_load_all) into objects with apiVersion, kind and metadata.name;
  secret.example.yaml parses, is the Secret `tokenvisor` and is not in the kustomization;
  one workload (StatefulSet or Deployment) with replicas >= 2 whose selector matches its
  pod labels; the Service and the PodDisruptionBudget (maxUnavailable 1) select those
  pods, and the Service targets a container port; readiness probe GET /readyz, liveness
  GET /healthz, a startup probe, all on a container port; every secretKeyRef / secretRef
  names the Secret `tokenvisor` and a key of secret.example.yaml; `$(VAR)` references
  name variables defined earlier, and TOKENVISOR_ADVERTISE_URL is built from the pod IP;
  non-root, read-only root filesystem, TOKENVISOR_DATA_DIR mounted from a volume;
  resources with requests and limits; terminationGracePeriodSeconds >= 60; a rolling
  update of one pod at a time; the service account and governing Service exist.

Usage: python3 deploy/check-compose.py [repository root]
"""

import glob
import os
import re
import sys

import yaml

EXPECTED_SERVICES = {"postgres", "tokenvisor", "tokenvisor-2", "otel-collector", "jaeger"}
# The tokenvisor replicas that share the work on one PostgreSQL database (docs/CLUSTER.md).
TOKENVISOR_REPLICAS = ("tokenvisor", "tokenvisor-2")
KUBERNETES_DIR = os.path.join("deploy", "kubernetes")
SECRET_NAME = "tokenvisor"
WORKLOAD_KINDS = {"StatefulSet", "Deployment"}
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


class Problems:
    def __init__(self):
        self.items = []

    def add(self, where, message):
        self.items.append(f"{where}: {message}")


def load_yaml(path, problems):
    try:
        with open(path, encoding="utf-8") as handle:
            return yaml.safe_load(handle)
    except (OSError, yaml.YAMLError) as error:
        problems.add(path, f"does not parse: {error}")
        return None


def port_host_ip(port):
    """The host IP of a published port in short or long syntax ('' when unbound)."""
    if isinstance(port, dict):
        return str(port.get("host_ip", ""))
    text = str(port)
    parts = text.split(":")
    if len(parts) == 3:
        return parts[0]
    return ""


def check_compose(root, problems):
    path = os.path.join(root, "docker-compose.yml")
    compose = load_yaml(path, problems)
    if not isinstance(compose, dict):
        problems.add(path, "is not a mapping")
        return None
    services = compose.get("services") or {}
    missing = EXPECTED_SERVICES - set(services)
    if missing:
        problems.add(path, f"missing services: {sorted(missing)}")
    declared_volumes = set((compose.get("volumes") or {}).keys())
    dockerfiles = []
    for name, service in services.items():
        where = f"{path}: service {name}"
        if not isinstance(service, dict):
            problems.add(where, "is not a mapping")
            continue
        if "image" not in service and "build" not in service:
            problems.add(where, "has neither image nor build")
        for port in service.get("ports") or []:
            if port_host_ip(port) != "127.0.0.1":
                problems.add(where, f"port {port!r} is not bound to 127.0.0.1")
        health = service.get("healthcheck")
        if not isinstance(health, dict) or not health.get("test") or health.get("disable"):
            problems.add(where, "has no health check")
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            depends = {dependency: {"condition": "service_started"} for dependency in depends}
        for dependency, spec in depends.items():
            if dependency not in services:
                problems.add(where, f"depends on undefined service {dependency!r}")
            condition = (spec or {}).get("condition", "service_started")
            if condition not in CONDITIONS:
                problems.add(where, f"unknown depends_on condition {condition!r}")
            if condition == "service_healthy" and dependency in services:
                if not (services[dependency] or {}).get("healthcheck"):
                    problems.add(where, f"waits for {dependency!r} to be healthy but it has no health check")
        build = service.get("build")
        if build is not None:
            context = build if isinstance(build, str) else build.get("context", ".")
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            context_path = os.path.normpath(os.path.join(root, context))
            dockerfile_path = os.path.join(context_path, dockerfile)
            if not os.path.isdir(context_path):
                problems.add(where, f"build context {context!r} does not exist")
            elif not os.path.isfile(dockerfile_path):
                problems.add(where, f"Dockerfile {dockerfile!r} does not exist")
            else:
                dockerfiles.append((dockerfile_path, context_path))
        for volume in service.get("volumes") or []:
            source = volume.get("source") if isinstance(volume, dict) else str(volume).split(":")[0]
            if not source:
                continue
            if source.startswith((".", "/")):
                if not os.path.exists(os.path.normpath(os.path.join(root, source))):
                    problems.add(where, f"mounted path {source!r} does not exist")
            elif source not in declared_volumes:
                problems.add(where, f"named volume {source!r} is not declared")
    check_cycles(path, services, problems)
    check_replicas(path, services, problems)
    return dockerfiles, services


def service_environment(service):
    environment = (service or {}).get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment if "=" in item)
    return {str(key): str(value) for key, value in environment.items()}


def check_replicas(path, services, problems):
    """The tokenvisor replicas: OTLP to the collector, one shared database, key and admin
    token, their own data volume and an advertised URL naming their own service."""
    shared = {}
    data_volumes = {}
    for name in TOKENVISOR_REPLICAS:
        if name not in services:
            continue
        where = f"{path}: service {name}"
        environment = service_environment(services[name])
        endpoint = environment.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
        if not re.match(r"^https?://otel-collector:4318/?$", endpoint):
            problems.add(where, f"must export to http://otel-collector:4318, not {endpoint!r}")
        if environment.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf") != "http/protobuf":
            problems.add(where, "exports OTLP over http/protobuf only")
        database = environment.get("TOKENVISOR_DATABASE_URL", "")
        if not database.startswith(("postgres://", "postgresql://")):
            problems.add(where, "replicas share the work on PostgreSQL only: TOKENVISOR_DATABASE_URL must be postgres://")
        for variable in ("TOKENVISOR_DATABASE_URL", "TOKENVISOR_ENCRYPTION_KEY", "TOKENVISOR_ADMIN_TOKEN"):
            value = environment.get(variable)
            if not value:
                problems.add(where, f"sets no {variable} (every replica must share it)")
            shared.setdefault(variable, {})[name] = value
        advertise = environment.get("TOKENVISOR_ADVERTISE_URL", "")
        if advertise.rstrip("/") != f"http://{name}:7070":
            problems.add(where, f"TOKENVISOR_ADVERTISE_URL must be http://{name}:7070, not {advertise!r}")
        data_dir = environment.get("TOKENVISOR_DATA_DIR", "/var/lib/tokenvisor")
        for volume in (services[name] or {}).get("volumes") or []:
            if isinstance(volume, dict):
                source, target = volume.get("source", ""), volume.get("target", "")
            else:
                parts = str(volume).split(":")
                source, target = parts[0], parts[1] if len(parts) > 1 else ""
            if target.rstrip("/") == data_dir.rstrip("/"):
                data_volumes[name] = source
        if name not in data_volumes:
            problems.add(where, f"mounts no volume on its data dir {data_dir}")
    for variable, values in shared.items():
        if len(set(values.values())) > 1:
            problems.add(path, f"the tokenvisor replicas must share one {variable}")
    owners = {}
    for name, volume in data_volumes.items():
        owners.setdefault(volume, []).append(name)
    for volume, names in owners.items():
        if len(names) > 1:
            problems.add(path, f"replicas {names} share the data volume {volume!r}: each needs its own")


def check_cycles(path, services, problems):
    def dependencies(name):
        depends = (services.get(name) or {}).get("depends_on") or {}
        return list(depends)

    state = {}

    def visit(name, trail):
        if state.get(name) == "done":
            return
        if state.get(name) == "visiting":
            problems.add(path, f"depends_on cycle: {' -> '.join(trail + [name])}")
            return
        state[name] = "visiting"
        for dependency in dependencies(name):
            if dependency in services:
                visit(dependency, trail + [name])
        state[name] = "done"

    for name in services:
        visit(name, [])


def dockerfile_instructions(path):
    """(instruction, arguments) pairs, continuation lines joined, comments dropped."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    logical = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        logical.append(current)
        current = ""
    if current:
        logical.append(current)
    instructions = []
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def check_dockerfile(path, context, problems):
    instructions = dockerfile_instructions(path)
    known = {
        "FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME",
        "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
    }
    stages = []
    user = None
    healthcheck = None
    for keyword, arguments in instructions:
        if keyword not in known:
            problems.add(path, f"unknown instruction {keyword}")
            continue
        if keyword == "FROM":
            match = re.match(r"^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$", arguments, re.IGNORECASE)
            if not match:
                problems.add(path, f"cannot parse FROM {arguments!r}")
                continue
            stages.append(match.group(2) or str(len(stages)))
            user = None
            healthcheck = None
        elif not stages and keyword != "ARG":
            problems.add(path, f"{keyword} before the first FROM")
        elif keyword == "USER":
            user = arguments.split(":")[0]
        elif keyword == "HEALTHCHECK":
            healthcheck = arguments
        elif keyword in ("COPY", "ADD"):
            words = arguments.split()
            from_stage = None
            plain = []
            for word in words:
                if word.startswith("--from="):
                    from_stage = word.split("=", 1)[1]
                elif not word.startswith("--"):
                    plain.append(word)
            if len(plain) < 2:
                problems.add(path, f"{keyword} needs a source and a destination: {arguments!r}")
                continue
            if from_stage is not None:
                if from_stage not in stages[:-1]:
                    problems.add(path, f"COPY --from={from_stage} names no earlier stage")
                continue
            for source in plain[:-1]:
                if not glob.glob(os.path.join(context, source)):
                    problems.add(path, f"{keyword} source {source!r} does not exist in the build context")
    if len(stages) < 2:
        problems.add(path, "is not a multi-stage build")
    if user in (None, "root", "0"):
        problems.add(path, "the final stage must run as a non-root USER")
    if not healthcheck or healthcheck.upper().startswith("NONE"):
        problems.add(path, "the final stage has no HEALTHCHECK")
    ignore = os.path.join(context, ".dockerignore")
    if os.path.isfile(ignore):
        with open(ignore, encoding="utf-8") as handle:
            if not any(line.strip().rstrip("/") in ("target", "/target") for line in handle):
                problems.add(ignore, "should exclude target/ from the build context")


def check_collector(root, services, problems):
    collector = services.get("otel-collector") or {}
    config_path = None
    for volume in collector.get("volumes") or []:
        source = str(volume).split(":")[0] if not isinstance(volume, dict) else volume.get("source", "")
        if source.endswith((".yaml", ".yml")):
            config_path = os.path.normpath(os.path.join(root, source))
    if config_path is None:
        problems.add("docker-compose.yml", "the collector mounts no configuration file")
        return
    config = load_yaml(config_path, problems)
    if not isinstance(config, dict):
        return
    service = config.get("service") or {}
    for extension in service.get("extensions") or []:
        if extension not in (config.get("extensions") or {}):
            problems.add(config_path, f"extension {extension!r} is not defined")
    pipelines = service.get("pipelines") or {}
    if "traces" not in pipelines or "metrics" not in pipelines:
        problems.add(config_path, "needs a traces and a metrics pipeline")
    for name, pipeline in pipelines.items():
        for section in ("receivers", "processors", "exporters"):
            for component in (pipeline or {}).get(section) or []:
                if component not in (config.get(section) or {}):
                    problems.add(config_path, f"pipeline {name}: {section[:-1]} {component!r} is not defined")
    otlp_http = (((config.get("receivers") or {}).get("otlp") or {}).get("protocols") or {}).get("http") or {}
    if not str(otlp_http.get("endpoint", "")).endswith(":4318"):
        problems.add(config_path, "the OTLP/HTTP receiver must listen on :4318")


def load_documents(path, problems):
    """Every document of a YAML file (None documents dropped), or None when it does not parse."""
    try:
        with open(path, encoding="utf-8") as handle:
            return [document for document in yaml.safe_load_all(handle) if document is not None]
    except (OSError, yaml.YAMLError) as error:
        problems.add(path, f"does not parse: {error}")
        return None


def selector_matches(selector, labels):
    """Whether a label selector (matchLabels and matchExpressions) selects these labels.
    An empty or missing selector selects nothing here: it would be a mistake."""
    if not isinstance(selector, dict):
        return False
    match_labels = selector.get("matchLabels") or {}
    expressions = selector.get("matchExpressions") or []
    if not match_labels and not expressions:
        return False
    for key, value in match_labels.items():
        if labels.get(key) != value:
            return False
    for expression in expressions:
        key = expression.get("key")
        operator = expression.get("operator")
        values = expression.get("values") or []
        if operator == "In" and labels.get(key) not in values:
            return False
        if operator == "NotIn" and labels.get(key) in values:
            return False
        if operator == "Exists" and key not in labels:
            return False
        if operator == "DoesNotExist" and key in labels:
            return False
    return True


def container_port_names(container):
    ports = set()
    for port in container.get("ports") or []:
        if "containerPort" in port:
            ports.add(port["containerPort"])
        if "name" in port:
            ports.add(port["name"])
    return ports


def check_kubernetes(root, problems):
    directory = os.path.join(root, KUBERNETES_DIR)
    kustomization_path = os.path.join(directory, "kustomization.yaml")
    documents = load_documents(kustomization_path, problems)
    if not documents:
        if documents is not None:
            problems.add(kustomization_path, "is empty")
        return
    kustomization = documents[0]
    if not isinstance(kustomization, dict) or kustomization.get("kind") != "Kustomization":
        problems.add(kustomization_path, "is not a Kustomization")
        return
    resources = kustomization.get("resources") or []
    if not resources:
        problems.add(kustomization_path, "lists no resources")
    objects = []
    for resource in resources:
        resource_path = os.path.normpath(os.path.join(directory, str(resource)))
        if not os.path.isfile(resource_path):
            problems.add(kustomization_path, f"resource {resource!r} does not exist")
            continue
        if os.path.basename(resource_path) == "secret.example.yaml":
            problems.add(kustomization_path, "lists secret.example.yaml: the operator creates the Secret, with real values")
        for document in load_documents(resource_path, problems) or []:
            where = f"{resource_path}: {document.get('kind', '?') if isinstance(document, dict) else '?'}"
            if not isinstance(document, dict):
                problems.add(resource_path, "holds a document that is not a mapping")
                continue
            if not document.get("apiVersion") or not document.get("kind"):
                problems.add(where, "has no apiVersion or kind")
            if not (document.get("metadata") or {}).get("name"):
                problems.add(where, "has no metadata.name")
            objects.append((resource_path, document))

    for resource_path, document in objects:
        if document.get("kind") == "Secret":
            problems.add(resource_path, "a Secret in the kustomization would put its values in the repository")
    secret_keys = check_example_secret(directory, problems)

    def named(kind):
        return [(where, document) for where, document in objects if document.get("kind") == kind]

    workloads = [(where, document) for where, document in objects if document.get("kind") in WORKLOAD_KINDS]
    if len(workloads) != 1:
        problems.add(KUBERNETES_DIR, f"needs exactly one workload (StatefulSet or Deployment), found {len(workloads)}")
        return
    workload_path, workload = workloads[0]
    where = f"{workload_path}: {workload['kind']} {(workload.get('metadata') or {}).get('name')}"
    spec = workload.get("spec") or {}
    template = spec.get("template") or {}
    pod_labels = (template.get("metadata") or {}).get("labels") or {}
    pod = template.get("spec") or {}
    if not pod_labels:
        problems.add(where, "the pod template has no labels")
    if not selector_matches(spec.get("selector"), pod_labels):
        problems.add(where, "its selector does not match its own pod labels")
    replicas = spec.get("replicas", 1)
    if not isinstance(replicas, int) or replicas < 2:
        problems.add(where, f"replicas must be at least 2 to share the work, not {replicas!r}")

    containers = pod.get("containers") or []
    if not containers:
        problems.add(where, "has no container")
        return
    ports = set()
    for container in containers:
        ports |= container_port_names(container)

    services = named("Service")
    if not services:
        problems.add(KUBERNETES_DIR, "has no Service")
    for service_path, service in services:
        service_where = f"{service_path}: Service {service['metadata'].get('name')}"
        service_spec = service.get("spec") or {}
        selector = service_spec.get("selector") or {}
        if not selector_matches({"matchLabels": selector}, pod_labels):
            problems.add(service_where, f"selector {selector} does not match the pod labels {pod_labels}")
        for port in service_spec.get("ports") or []:
            target = port.get("targetPort", port.get("port"))
            if target not in ports:
                problems.add(service_where, f"targetPort {target!r} is not a container port of the workload")
    if not any((service.get("spec") or {}).get("type", "ClusterIP") == "ClusterIP"
               and any(port.get("port") == 7070 for port in (service.get("spec") or {}).get("ports") or [])
               for _, service in services):
        problems.add(KUBERNETES_DIR, "needs a ClusterIP Service on port 7070")

    budgets = named("PodDisruptionBudget")
    if not budgets:
        problems.add(KUBERNETES_DIR, "has no PodDisruptionBudget")
    for budget_path, budget in budgets:
        budget_where = f"{budget_path}: PodDisruptionBudget {budget['metadata'].get('name')}"
        budget_spec = budget.get("spec") or {}
        if not selector_matches(budget_spec.get("selector"), pod_labels):
            problems.add(budget_where, f"selector {budget_spec.get('selector')} does not match the pod labels {pod_labels}")
        if budget_spec.get("maxUnavailable") != 1:
            problems.add(budget_where, "maxUnavailable must be 1")

    if workload["kind"] == "StatefulSet":
        strategy = spec.get("updateStrategy") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            problems.add(where, "updateStrategy must be RollingUpdate (one pod at a time)")
        if (strategy.get("rollingUpdate") or {}).get("maxUnavailable", 1) != 1:
            problems.add(where, "a rolling update must replace one pod at a time")
        governing = spec.get("serviceName")
        if governing and governing not in {document["metadata"].get("name") for _, document in services}:
            problems.add(where, f"serviceName {governing!r} names no Service of the kustomization")
    else:
        strategy = spec.get("strategy") or {}
        rolling = strategy.get("rollingUpdate") or {}
        if strategy.get("type", "RollingUpdate") != "RollingUpdate" or rolling.get("maxUnavailable") not in (0, 1) \
                or rolling.get("maxSurge") not in (0, 1):
            problems.add(where, "strategy must be a RollingUpdate of one pod at a time (maxUnavailable and maxSurge 0 or 1)")
    account = pod.get("serviceAccountName")
    if account and account not in {document["metadata"].get("name") for _, document in named("ServiceAccount")}:
        problems.add(where, f"serviceAccountName {account!r} names no ServiceAccount of the kustomization")
    grace = pod.get("terminationGracePeriodSeconds", 30)
    if not isinstance(grace, int) or grace < 60:
        problems.add(where, f"terminationGracePeriodSeconds must leave the ~60 s handover time, not {grace!r}")
    for term in ((pod.get("affinity") or {}).get("podAntiAffinity") or {}).get(
            "preferredDuringSchedulingIgnoredDuringExecution") or []:
        if not selector_matches((term.get("podAffinityTerm") or {}).get("labelSelector"), pod_labels):
            problems.add(where, "the pod anti-affinity selector does not match the pod labels")

    pod_security = pod.get("securityContext") or {}
    volumes = {volume.get("name") for volume in pod.get("volumes") or []}
    volumes |= {(claim.get("metadata") or {}).get("name") for claim in spec.get("volumeClaimTemplates") or []}
    for container in containers:
        container_where = f"{where}: container {container.get('name')}"
        security = container.get("securityContext") or {}
        if not (security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))):
            problems.add(container_where, "must set runAsNonRoot")
        if security.get("runAsUser", pod_security.get("runAsUser")) == 0:
            problems.add(container_where, "runs as root (runAsUser 0)")
        if not security.get("readOnlyRootFilesystem"):
            problems.add(container_where, "must set readOnlyRootFilesystem")
        if security.get("allowPrivilegeEscalation", True):
            problems.add(container_where, "must set allowPrivilegeEscalation: false")
        resources_spec = container.get("resources") or {}
        for section in ("requests", "limits"):
            if not (resources_spec.get(section) or {}).get("memory"):
                problems.add(container_where, f"resources.{section}.memory is not set")
        if not (resources_spec.get("requests") or {}).get("cpu"):
            problems.add(container_where, "resources.requests.cpu is not set")
        container_ports = container_port_names(container)
        for probe_name, paths in (("readinessProbe", ("/readyz",)), ("livenessProbe", ("/healthz",)),
                                  ("startupProbe", ("/healthz", "/readyz"))):
            probe = container.get(probe_name)
            if not isinstance(probe, dict):
                problems.add(container_where, f"has no {probe_name}")
                continue
            http = probe.get("httpGet") or {}
            if http.get("path") not in paths:
                problems.add(container_where, f"{probe_name} must GET {' or '.join(paths)}, not {http.get('path')!r}")
            if http.get("port") not in container_ports:
                problems.add(container_where, f"{probe_name} port {http.get('port')!r} is not a port of the container")
        mounts = {}
        for mount in container.get("volumeMounts") or []:
            if mount.get("name") not in volumes:
                problems.add(container_where, f"mounts undefined volume {mount.get('name')!r}")
            mounts[str(mount.get("mountPath", "")).rstrip("/")] = mount
        defined = set()
        environment = {}
        for variable in container.get("env") or []:
            name = variable.get("name")
            value = variable.get("value")
            if isinstance(value, str):
                for reference in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", value):
                    if reference not in defined:
                        problems.add(container_where, f"{name} uses $({reference}), which is not defined before it")
                environment[name] = value
            reference = (variable.get("valueFrom") or {}).get("secretKeyRef")
            if reference is not None:
                if reference.get("name") != SECRET_NAME:
                    problems.add(container_where, f"{name} reads the Secret {reference.get('name')!r}, not {SECRET_NAME!r}")
                elif secret_keys is not None and reference.get("key") not in secret_keys:
                    problems.add(container_where, f"{name} reads key {reference.get('key')!r}, absent from secret.example.yaml")
            field = ((variable.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
            if field:
                environment[name] = f"<{field}>"
            defined.add(name)
        for source in container.get("envFrom") or []:
            secret = source.get("secretRef")
            if secret is not None and secret.get("name") != SECRET_NAME:
                problems.add(container_where, f"envFrom reads the Secret {secret.get('name')!r}, not {SECRET_NAME!r}")
        for required in ("TOKENVISOR_DATABASE_URL", "TOKENVISOR_ENCRYPTION_KEY", "TOKENVISOR_ADMIN_TOKEN"):
            if required not in defined:
                problems.add(container_where, f"sets no {required} (every replica must share it)")
        advertise = environment.get("TOKENVISOR_ADVERTISE_URL", "")
        pod_ip_variables = {name for name, value in environment.items() if value == "<status.podIP>"}
        match = re.match(r"^http://\[?\$\(([A-Za-z_][A-Za-z0-9_]*)\)\]?:(\S+)$", advertise)
        if not match or match.group(1) not in pod_ip_variables:
            problems.add(container_where, f"TOKENVISOR_ADVERTISE_URL must be http://$(POD_IP):<port> with POD_IP from status.podIP, not {advertise!r}")
        elif match.group(2).isdigit() and int(match.group(2)) not in container_ports:
            problems.add(container_where, f"TOKENVISOR_ADVERTISE_URL port {match.group(2)} is not a container port")
        admin_addr = environment.get("TOKENVISOR_ADMIN_ADDR", "")
        if not admin_addr.startswith("0.0.0.0:") or not admin_addr.rsplit(":", 1)[1].isdigit() \
                or int(admin_addr.rsplit(":", 1)[1]) not in container_ports:
            problems.add(container_where, f"TOKENVISOR_ADMIN_ADDR must listen on 0.0.0.0 on the container port, not {admin_addr!r}")
        data_dir = environment.get("TOKENVISOR_DATA_DIR", "").rstrip("/")
        if not data_dir:
            problems.add(container_where, "sets no TOKENVISOR_DATA_DIR")
        elif data_dir not in mounts:
            problems.add(container_where, f"TOKENVISOR_DATA_DIR {data_dir} is not a mounted volume (the root filesystem is read-only)")


def check_example_secret(directory, problems):
    """The keys of secret.example.yaml's Secret `tokenvisor` (None when unusable)."""
    path = os.path.join(directory, "secret.example.yaml")
    if not os.path.isfile(path):
        problems.add(path, "does not exist")
        return None
    documents = load_documents(path, problems)
    if documents is None:
        return None
    secrets = [document for document in documents if isinstance(document, dict) and document.get("kind") == "Secret"]
    if len(secrets) != 1 or (secrets[0].get("metadata") or {}).get("name") != SECRET_NAME:
        problems.add(path, f"must hold exactly one Secret named {SECRET_NAME!r}")
        return None
    keys = set((secrets[0].get("data") or {}).keys()) | set((secrets[0].get("stringData") or {}).keys())
    if not keys:
        problems.add(path, "the Secret has no keys")
    return keys


def main():
    root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
    problems = Problems()
    result = check_compose(root, problems)
    if result is not None:
        dockerfiles, services = result
        if not dockerfiles:
            problems.add("docker-compose.yml", "no service is built from a Dockerfile in the repository")
        for dockerfile, context in dockerfiles:
            check_dockerfile(dockerfile, context, problems)
        check_collector(root, services, problems)
    check_kubernetes(root, problems)
    if problems.items:
        for problem in problems.items:
            print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    print("docker-compose.yml, Dockerfile, collector configuration and deploy/kubernetes: ok")


if __name__ == "__main__":
    main()
