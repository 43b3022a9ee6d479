#!/usr/bin/env python3
"""Assertions over manifests rendered by `helm template` (one file per values variant):
what matters for safety, beyond schema validity.

- Order: the capture init container runs first, then the warden as a native sidecar
  (restartPolicy: Always) with a startup probe on /readyz, then the sandbox.
- Agreement: the ports and mark the init container installs are the ones the sidecar listens
  on and marks its sockets with; the admin port of the rules is the sidecar's admin port.
- Least privilege: init adds NET_ADMIN only; the sidecar NET_ADMIN (+ KILL to kill the
  sandbox) only; both drop ALL; the sandbox adds nothing and runs as non-root; seccomp
  RuntimeDefault, read-only root filesystems and no privilege escalation everywhere.
- The pod shares its process namespace exactly when the sidecar may kill the sandbox, and
  carries the allowlists checksum.

Usage: check_rendered.py RENDERED.yaml... ; prints one line per file, exits 1 on a failure.
"""
import sys

import yaml


def flags(args):
    out = {}
    for a in args:
        if a.startswith("--"):
            k, _, v = a[2:].partition("=")
            out[k] = v if _ else True
    return out


def check_security(c, adds, root):
    sc = c.get("securityContext", {})
    name = c["name"]
    assert sc.get("allowPrivilegeEscalation") is False, f"{name}: privilege escalation allowed"
    assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{name}: no RuntimeDefault seccomp"
    caps = sc.get("capabilities", {})
    assert caps.get("drop") == ["ALL"], f"{name}: does not drop ALL capabilities"
    assert sorted(caps.get("add", [])) == sorted(adds), f"{name}: adds {caps.get('add')}, want {adds}"
    if root:
        assert sc.get("readOnlyRootFilesystem") is True, f"{name}: writable root filesystem"
    else:
        assert sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) > 0, f"{name}: may run as root"


def check_pod(pod, annotations):
    spec = pod["spec"]
    inits = spec.get("initContainers", [])
    assert [c["name"] for c in inits[:2]] == ["egress-warden-init", "egress-warden"], [c["name"] for c in inits]
    init, warden = inits[0], inits[1]
    assert init["args"][0] == "init" and "restartPolicy" not in init, "capture init must be a plain init container"
    assert warden.get("restartPolicy") == "Always", "the warden must be a native sidecar"
    assert warden["args"][0] == "serve" and "--capture=verify" in warden["args"]
    probe = warden.get("startupProbe", {}).get("httpGet", {})
    assert probe.get("path") == "/readyz", "the sandbox must wait for proven capture (startupProbe /readyz)"
    fi, fw = flags(init["args"]), flags(warden["args"])
    for key in ("transparent-port", "dns-port", "mark"):
        assert fi[key] == fw[key], f"{key}: init installs {fi[key]}, sidecar uses {fw[key]}"
    admin_port = fw["admin-listen"].rsplit(":", 1)[1]
    assert fi["admin-port"] == admin_port, f"rules close admin port {fi['admin-port']}, sidecar listens on {admin_port}"
    metrics = [p for p in warden["ports"] if p["name"] == "ew-metrics"]
    assert metrics and str(metrics[0]["containerPort"]) == admin_port
    kill = "terminate-pid-namespace" in fw
    assert spec.get("shareProcessNamespace") is kill, "shareProcessNamespace must match --terminate-pid-namespace"
    check_security(init, ["NET_ADMIN"], root=True)
    check_security(warden, ["NET_ADMIN", "KILL"] if kill else ["NET_ADMIN"], root=True)
    env = {e["name"]: e for e in warden.get("env", [])}
    assert "fieldRef" in env["EGRESS_WARDEN_RUN_ID"]["valueFrom"], "run id must come from the pod"
    assert warden.get("terminationMessagePath") == "/dev/termination-log"
    assert fw.get("termination-message-path") == "/dev/termination-log"
    for c in spec["containers"]:
        check_security(c, [], root=False)
    assert "checksum/egress-warden-allowlists" in annotations
    mounts = {m["name"] for m in warden["volumeMounts"]}
    volumes = {v["name"] for v in spec["volumes"]}
    assert mounts <= volumes, f"missing volumes {mounts - volumes}"
    return fi, fw


def main(paths):
    failed = False
    for path in paths:
        try:
            docs = [d for d in yaml.safe_load_all(open(path)) if d]
            kinds = [d["kind"] for d in docs]
            monitored = any(d["kind"] == "PodMonitor" for d in docs)
            for job in [d for d in docs if d["kind"] == "Job"]:
                tmpl = job["spec"]["template"]
                annotations = tmpl["metadata"].get("annotations", {})
                check_pod(tmpl, annotations)
                scraped = annotations.get("prometheus.io/scrape") == "true"
                assert not (monitored and scraped), "scraped twice: a PodMonitor and prometheus.io annotations"
                assert job["spec"]["template"]["spec"]["restartPolicy"] == "Never"
            for cm in [d for d in docs if d["kind"] == "ConfigMap"]:
                assert cm["data"], "empty allowlists ConfigMap"
                assert all(k.endswith(".txt") for k in cm["data"]), cm["data"].keys()
            for pm in [d for d in docs if d["kind"] == "PodMonitor"]:
                assert pm["spec"]["podMetricsEndpoints"][0]["port"] == "ew-metrics"
                assert pm["spec"]["selector"]["matchLabels"] == {"egress-warden.io/sidecar": "true"}
            for pr in [d for d in docs if d["kind"] == "PrometheusRule"]:
                names = [r["alert"] for g in pr["spec"]["groups"] for r in g["rules"]]
                assert "EgressWardenViolation" in names and "EgressWardenRunTerminated" in names, names
            print(f"ok {path}: {', '.join(kinds)}")
        except AssertionError as e:
            failed = True
            print(f"FAIL {path}: {e}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
