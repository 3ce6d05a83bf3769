"""DEV-ONLY cluster DNS for the local real node
(devtools.node). NOT a DNS server for anything else: no upstream, no caching, no security.
It exists because Debian has no CoreDNS/kube-dns package and no registry of images is reachable.

  <svc>.<ns>.svc.cluster.local            A  ClusterIP (headless: every endpoint address)
  <hostname>.<svc>.<ns>.svc.cluster.local A  endpoint address with that hostname (StatefulSet pods)
  <a-b-c-d>.<ns>.pod.cluster.local        A  a.b.c.d
Anything else: NXDOMAIN (there is no upstream resolver in the sandbox). UDP and TCP.
It polls services and endpoints every --interval seconds (a watch would be the real thing).
"""

import argparse
import base64
import json
import ssl
import threading
import time
import urllib.request

import yaml
from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer

DOMAIN = "cluster.local."


class Api:
    def __init__(self, kubeconfig: str):
        cfg = yaml.safe_load(open(kubeconfig))
        ctx_name = cfg["current-context"]
        ctx = next(c["context"] for c in cfg["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in cfg["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in cfg["users"] if u["name"] == ctx["user"])
        self.server = cluster["server"]
        self.ssl = ssl.create_default_context()
        if "certificate-authority-data" in cluster:
            self.ssl.load_verify_locations(cadata=base64.b64decode(cluster["certificate-authority-data"]).decode())
        elif "certificate-authority" in cluster:
            self.ssl.load_verify_locations(cafile=cluster["certificate-authority"])
        self.token = user.get("token")

    def get(self, path: str) -> dict:
        req = urllib.request.Request(self.server + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(req, context=self.ssl, timeout=5) as r:
            return json.load(r)


class Resolver(BaseResolver):
    def __init__(self, api: Api, interval: float):
        self.api, self.interval, self.records, self.lock = api, interval, {}, threading.Lock()
        self.refresh()
        threading.Thread(target=self.loop, daemon=True).start()

    def loop(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.refresh()
            except Exception as e:  # keep serving the last good table
                print("refresh failed:", e, flush=True)

    def refresh(self) -> None:
        recs: dict[str, list[str]] = {}
        svcs = {
            (s["metadata"]["namespace"], s["metadata"]["name"]): s for s in self.api.get("/api/v1/services")["items"]
        }
        for ep in self.api.get("/api/v1/endpoints")["items"]:
            ns, name = ep["metadata"]["namespace"], ep["metadata"]["name"]
            svc = svcs.get((ns, name))
            if not svc or svc["spec"].get("clusterIP") not in (None, "None"):
                continue
            base = f"{name}.{ns}.svc.{DOMAIN}"
            for subset in ep.get("subsets") or []:
                addrs = list(subset.get("addresses") or [])
                if svc["spec"].get("publishNotReadyAddresses"):
                    addrs += subset.get("notReadyAddresses") or []
                for a in addrs:
                    recs.setdefault(base, []).append(a["ip"])
                    if a.get("hostname"):
                        recs.setdefault(f"{a['hostname']}.{base}", []).append(a["ip"])
        for (ns, name), s in svcs.items():
            ip = s["spec"].get("clusterIP")
            if ip and ip != "None":
                recs[f"{name}.{ns}.svc.{DOMAIN}"] = [ip]
        with self.lock:
            self.records = recs

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname).lower()
        with self.lock:
            ips = self.records.get(qname)
        if ips is None and qname.endswith(".pod." + DOMAIN):
            dashed = qname.split(".")[0]
            if dashed.count("-") == 3:
                ips = [dashed.replace("-", ".")]
        if ips is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif request.q.qtype in (QTYPE.A, QTYPE.ANY):
            for ip in sorted(set(ips)):
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A(ip), ttl=5))
        return reply  # other types for a known name: NOERROR, no answers


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--address", default="0.0.0.0")
    p.add_argument("--port", type=int, default=53)
    p.add_argument("--interval", type=float, default=1.0)
    a = p.parse_args()
    resolver = Resolver(Api(a.kubeconfig), a.interval)
    for tcp in (False, True):
        DNSServer(
            resolver,
            address=a.address,
            port=a.port,
            tcp=tcp,
            logger=DNSLogger(log="-request,-reply,-truncated,-data", prefix=False),
        ).start_thread()
    print(f"dns: serving {DOMAIN} on {a.address}:{a.port}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
