"""The cluster launchers are valid for the tools that read them: cluster.yaml for Ray's cluster
launcher (its own schema and config preparation), the KubeRay manifests for the RayJob and
RayCluster CRD schemas (tests/fixtures/kuberay, with their source), and every raglign command
line they run for raglign's own parser. None installs raglign from a URL."""

from __future__ import annotations

import gzip
import json
import re
import shlex
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kuberay"


def _schema(kind: str) -> dict:
    with gzip.open(FIXTURES / f"{kind}.schema.json.gz", "rt") as f:
        return json.load(f)


def _comment_commands(name: str) -> list[str]:
    """The command lines a manifest's comment gives, continuation lines joined."""
    commands, current = [], ""
    for line in (REPO / "jobs" / "kuberay" / f"{name}.yaml").read_text().splitlines():
        if not line.startswith("#"):
            continue
        text = line.lstrip("# ")
        current += " " + text.removesuffix("\\")
        if not text.endswith("\\"):
            commands.append(current.strip())
            current = ""
    return commands


def _parses(command: str) -> None:
    """A `raglign ...` command line is one raglign's CLI accepts (flags and choices)."""
    from raglign.cli import build_parser

    words = shlex.split(command)
    assert words[0] == "raglign", command
    build_parser().parse_args(words[1:])


def test_cluster_yaml_is_valid_for_rays_cluster_launcher():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    validate_config(prepare_config(config))
    setup = " ".join(config["setup_commands"])
    assert "http" not in setup and "git+" not in setup  # installed from the copied checkout
    mounted = {v: k for k, v in config["file_mounts"].items()}
    assert mounted["."] in setup
    assert config["rsync_filter"] == [".gitignore"]
    version = re.search(r"ray:([\d.]+)-", config["docker"]["image"]).group(1)
    assert f'ray[default,data,train,tune]=={version}' in (REPO / "pyproject.toml").read_text()


@pytest.mark.parametrize("name,kind", [("rayjob_label", "rayjobs"),
                                       ("raycluster_sweeps", "rayclusters")])
def test_kuberay_manifests_match_the_crd_schema(name, kind):
    manifest = yaml.safe_load((REPO / "jobs" / "kuberay" / f"{name}.yaml").read_text())
    schema = _schema(kind)
    assert (manifest["apiVersion"], manifest["kind"]) == (schema["apiVersion"], schema["kind"])
    jsonschema.validate(manifest, schema["schema"])
    spec = manifest["spec"].get("rayClusterSpec", manifest["spec"])
    assert spec["rayVersion"] == "2.60.0"
    dockerfile = (REPO / "Dockerfile").read_text()
    image = re.search(r"docker build -t (\S+) \.", dockerfile).group(1)
    pods = [spec["headGroupSpec"]] + spec["workerGroupSpecs"]
    assert {c["image"] for p in pods for c in p["template"]["spec"]["containers"]} == {image}
    commands = [manifest["spec"]["entrypoint"]] if "entrypoint" in manifest["spec"] else [
        line.split("-- ", 1)[1] for line in _comment_commands(name) if "-- raglign" in line]
    assert commands
    for command in commands:
        _parses(command)


def test_a_manifest_that_breaks_the_schema_is_caught():
    """The schema check can fail: a misspelt field of the RayJob spec."""
    manifest = yaml.safe_load((REPO / "jobs" / "kuberay" / "rayjob_label.yaml").read_text())
    manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] = "four"
    with pytest.raises(jsonschema.ValidationError, match="replicas"):
        jsonschema.validate(manifest, _schema("rayjobs")["schema"])
