#!/usr/bin/env python3
"""Checks docker-compose.yml, the Dockerfile and the collector configuration without a
Docker engine: they parse, and everything they reference exists.

- compose: the four services (postgres, tokenvisor, otel-collector, jaeger); every
  published port bound to 127.0.0.1; a health check on every service; `depends_on`
  naming defined services with a valid condition, and no dependency cycle; build
  contexts and Dockerfiles that exist; bind-mounted files that exist; named volumes
  declared; tokenvisor exporting OTLP/HTTP to the collector service.
- Dockerfile: several stages, `COPY --from` naming an earlier stage, COPY sources that
  exist in the context, a non-root USER and a HEALTHCHECK in the final stage.
- collector: every pipeline's receivers, processors and exporters are defined, and its
  extensions too; the OTLP/HTTP receiver listens on 4318.

Usage: python3 deploy/check-compose.py [repository root]
"""

import glob
import os
import re
import sys

import yaml

EXPECTED_SERVICES = {"postgres", "tokenvisor", "otel-collector", "jaeger"}
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
    tokenvisor = services.get("tokenvisor") or {}
    environment = tokenvisor.get("environment") or {}
    if isinstance(environment, list):
        environment = dict(item.split("=", 1) for item in environment if "=" in item)
    endpoint = str(environment.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
    if not re.match(r"^https?://otel-collector:4318/?$", endpoint):
        problems.add(path, f"tokenvisor must export to http://otel-collector:4318, not {endpoint!r}")
    if str(environment.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")) != "http/protobuf":
        problems.add(path, "tokenvisor exports OTLP over http/protobuf only")
    return dockerfiles, services


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
    if problems.items:
        for problem in problems.items:
            print(f"error: {problem}", file=sys.stderr)
        sys.exit(1)
    print("docker-compose.yml, Dockerfile and collector configuration: ok")


if __name__ == "__main__":
    main()
